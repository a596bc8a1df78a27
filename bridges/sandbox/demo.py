"""``caliopen demo``: a throwaway homeserver with Caliopen registered, all on loopback.

Everything lives in one working directory (SQLite everywhere). It prints the homeserver URL
and a demo user's password to use from any Matrix client, and stops everything on Ctrl-C.
Networks whose local sandbox can run here are switched on, with a demo account ready to log in.
"""

from __future__ import annotations

import asyncio
import logging
import secrets
import signal
from pathlib import Path
from typing import Any

from ..config import Config, generate_config, random_token, write_registration
from .synapse import Synapse, free_port

log = logging.getLogger("caliopen.demo")

DOMAIN = "caliopen.localhost"


def _demo_config(workdir: Path, hs_port: int) -> Config:
    path = workdir / "config.yaml"
    if path.exists():
        return Config.load(path)
    port = free_port()
    cfg = generate_config(f"http://127.0.0.1:{hs_port}", DOMAIN)
    cfg.set("appservice.port", port)
    cfg.set("appservice.address", f"http://127.0.0.1:{port}")
    cfg.set("appservice.public_url", f"http://127.0.0.1:{port}")
    cfg.set("database.url", f"sqlite:///{(workdir / 'caliopen.db').resolve()}")
    for name, section in cfg["networks"].items():
        section["enabled"] = bool(section["enabled"]) and _importable(cfg, name)
    cfg.set("networks.email.allow_plaintext_loopback", True)
    # The demo owns its homeserver, so it also registers double puppeting: mail the user sent
    # with another client shows as theirs.
    cfg.set("homeserver.double_puppet_as_token", random_token())
    cfg.path = path
    cfg.validate()
    cfg.save()
    path.chmod(0o600)
    return cfg


async def _start_sandboxes(cfg: Config, workdir: Path) -> tuple[list[Any], list[str]]:
    """Start the local servers of networks that have one; returns (servers, lines to print)."""
    servers: list[Any] = []
    lines: list[str] = []
    try:
        from .mail import MailSandbox, mail_sandbox_available
    except ImportError:
        return servers, lines
    if cfg["networks.email.enabled"] and mail_sandbox_available():
        mail = MailSandbox(workdir / "mail")
        try:
            await mail.start()
        except Exception as e:  # a sandbox that cannot start must not stop the demo
            log.warning("The mail sandbox did not start (%s); email has no local mailbox", e)
        else:
            servers.append(mail)
            lines.extend(mail.describe())
    return servers, lines


async def demo(workdir: Path, port: int = 8008) -> int:
    from ..app import run, setup_logging

    workdir = workdir.resolve()
    workdir.mkdir(parents=True, exist_ok=True)
    if port == 0 or not _port_free(port):
        port = free_port()
    cfg = _demo_config(workdir, port)
    cfg.set("homeserver.address", f"http://127.0.0.1:{port}")
    cfg.save()
    write_registration(cfg, workdir / "appservice.yaml")
    registrations = [workdir / "appservice.yaml"]
    if cfg.get("homeserver.double_puppet_as_token", ""):
        write_registration(cfg, workdir / "doublepuppet.yaml", cfg.double_puppet_registration())
        registrations.append(workdir / "doublepuppet.yaml")
    setup_logging(cfg)
    synapse = Synapse(workdir / "synapse", server_name=DOMAIN, port=port, appservice_files=registrations)
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGINT, signal.SIGTERM):
        loop.add_signal_handler(sig, stop.set)
    sandboxes: list[Any] = []
    await synapse.start()
    try:
        password = secrets.token_urlsafe(12)
        user = f"demo{secrets.token_hex(2)}"
        mxid = await synapse.register_user(user, password, displayname="Demo user")
        sandboxes, extra = await _start_sandboxes(cfg, workdir)
        for box in sandboxes:
            if hasattr(box, "ca_file"):
                cfg.set("networks.email.tls_ca_file", str(box.ca_file))
        cfg.save()
        ready = asyncio.Event()
        bridge = asyncio.create_task(run(cfg, ready=ready, stop=stop))
        done, _ = await asyncio.wait({bridge, asyncio.create_task(ready.wait())},
                                     return_when=asyncio.FIRST_COMPLETED)
        if bridge in done:
            bridge.result()
            return 1
        print("\n".join([
            "",
            "Caliopen demo is running.",
            f"  Homeserver:  http://127.0.0.1:{port}   (server name {DOMAIN})",
            f"  User:        {mxid}",
            f"  Password:    {password}",
            f"  Bridge bot:  {cfg.bot_mxid}  (start a direct chat with it, then send `help`)",
            *extra,
            "Press Ctrl-C to stop.",
            "",
        ]), flush=True)
        await bridge
        return 0
    finally:
        for server in reversed(sandboxes):
            await server.stop()
        await synapse.stop()


def _importable(cfg: Config, network: str) -> bool:
    import importlib.util

    try:
        return importlib.util.find_spec(cfg.network_module(network)) is not None
    except Exception:
        return False


def _port_free(port: int) -> bool:
    import socket

    with socket.socket() as s:
        try:
            s.bind(("127.0.0.1", port))
        except OSError:
            return False
    return True
