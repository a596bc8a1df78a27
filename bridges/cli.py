"""``caliopen``: init, registration, migrate, run, demo.

Every command exits non-zero with one plain line on a bad config (the key is named).
"""

from __future__ import annotations

import argparse
import asyncio
import sys
from pathlib import Path

from .config import Config, generate_config, random_token, write_registration
from .core.errors import ConfigError


def _registration_path(config_path: Path) -> Path:
    return config_path.with_name("appservice.yaml")


def cmd_init(args: argparse.Namespace) -> int:
    path = Path(args.config)
    if path.exists() and not args.force:
        print(f"{path} exists; use --force to overwrite it", file=sys.stderr)
        return 1
    cfg = generate_config(args.homeserver_url, args.domain)
    if args.database:
        cfg.set("database.url", args.database)
    cfg.validate()
    cfg.save(path)
    path.chmod(0o600)
    reg = _registration_path(path)
    write_registration(cfg, reg)
    print(f"Wrote {path} and {reg}. Add {reg} to the homeserver's app_service_config_files, then run "
          f"`caliopen run -c {path}`.")
    return 0


def cmd_registration(args: argparse.Namespace) -> int:
    cfg = Config.load(args.config)
    if args.double_puppet:
        return _double_puppet_registration(cfg, Path(args.config), args.output)
    reg = Path(args.output) if args.output else _registration_path(Path(args.config))
    write_registration(cfg, reg)
    print(f"Wrote {reg}")
    return 0


def _double_puppet_registration(cfg: Config, config_path: Path, output: str | None) -> int:
    """Write the double-puppeting registration; a config without its token gets a new one."""
    if not cfg.get("homeserver.double_puppet_as_token", ""):
        cfg.set("homeserver.double_puppet_as_token", random_token())
        cfg.validate()
        cfg.save(config_path)
        config_path.chmod(0o600)
        print(f"Added homeserver.double_puppet_as_token to {config_path}")
    reg = Path(output) if output else config_path.with_name("doublepuppet.yaml")
    write_registration(cfg, reg, cfg.double_puppet_registration())
    reg.chmod(0o600)
    print(f"Wrote {reg}. Add it to the homeserver's app_service_config_files too, restart the homeserver, "
          f"then the bridge: what users write or read with their other clients then shows as theirs.")
    return 0


def cmd_migrate(args: argparse.Namespace) -> int:
    from .db import migrate

    cfg = Config.load(args.config)
    asyncio.run(migrate.upgrade(cfg["database.url"]))
    print(f"Database is at revision {migrate.head_revision()}")
    return 0


def cmd_run(args: argparse.Namespace) -> int:
    from .app import run, setup_logging

    cfg = Config.load(args.config)
    setup_logging(cfg)
    asyncio.run(run(cfg))
    return 0


def cmd_demo(args: argparse.Namespace) -> int:
    from .sandbox.demo import demo

    return asyncio.run(demo(Path(args.workdir), port=args.port))


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="caliopen", description="Private correspondence in encrypted Matrix rooms")
    sub = p.add_subparsers(dest="cmd", required=True)
    i = sub.add_parser("init", help="write a config with fresh secrets, and its registration")
    i.add_argument("-c", "--config", default="config.yaml")
    i.add_argument("--homeserver-url")
    i.add_argument("--domain")
    i.add_argument("--database", help="database URL (default: sqlite:caliopen.db)")
    i.add_argument("--force", action="store_true")
    i.set_defaults(func=cmd_init)
    r = sub.add_parser("registration", help="write appservice.yaml from the config")
    r.add_argument("-c", "--config", default="config.yaml")
    r.add_argument("-o", "--output")
    r.add_argument("--double-puppet", action="store_true",
                   help="write doublepuppet.yaml instead: the registration that lets the bridge act as local "
                        "users (adds its token to the config when missing)")
    r.set_defaults(func=cmd_registration)
    m = sub.add_parser("migrate", help="upgrade the database schema")
    m.add_argument("-c", "--config", default="config.yaml")
    m.set_defaults(func=cmd_migrate)
    u = sub.add_parser("run", help="run the bridge until SIGINT/SIGTERM")
    u.add_argument("-c", "--config", default="config.yaml")
    u.set_defaults(func=cmd_run)
    d = sub.add_parser("demo", help="a throwaway homeserver with the bridge, on loopback")
    d.add_argument("--workdir", default="demo-data")
    d.add_argument("--port", type=int, default=8008)
    d.set_defaults(func=cmd_demo)
    args = p.parse_args(argv)
    try:
        return int(args.func(args) or 0)
    except ConfigError as e:
        print(f"caliopen: {e}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        return 130


if __name__ == "__main__":
    sys.exit(main())
