"""The bridge's one YAML config: loading, validation, generation, and the registration.

Each network owns its section under ``networks.<name>``; the core reads only ``enabled``,
``ghost_prefix``, ``displayname_template`` and ``module`` there. Every error names the bad key
(:class:`bridges.core.errors.ConfigError`), and placeholder secrets are refused.
"""

from __future__ import annotations

import base64
import io
import re
import secrets
from pathlib import Path
from typing import Any

from ruamel.yaml import YAML

from .core.errors import ConfigError

EXAMPLE = Path(__file__).with_name("example-config.yaml")

# Networks this version knows: name -> module holding `Connector`. None: not available yet.
KNOWN_NETWORKS: dict[str, str | None] = {
    "email": "bridges.email.connector",
    "sms": "bridges.sms.connector",
    "twitter": None,
    "facebook": None,
}

PLACEHOLDERS = {"", "generate", "changeme", "change-me", "secret", "...", "xxx", "todo"}
SECRET_KEYS = (
    "appservice.as_token",
    "appservice.hs_token",
    "appservice.sender_localpart",
    "bridge.secret_key",
)
LEVELS = ("relay", "user", "admin")

_MISSING = object()


def _yaml() -> YAML:
    y = YAML()
    y.indent(mapping=4, sequence=4, offset=2)
    y.preserve_quotes = True
    y.width = 100
    return y


class Config:
    """A loaded, validated config. Read values with ``cfg["a.b.c"]``."""

    def __init__(self, data: Any, path: Path | None = None) -> None:
        self.data = data
        self.path = path

    @classmethod
    def load(cls, path: str | Path) -> Config:
        """Read and validate ``path``. Raises ConfigError naming the bad key."""
        path = Path(path)
        if not path.exists():
            raise ConfigError("-", f"config file {path} does not exist (make one with `caliopen init`)")
        try:
            data = _yaml().load(path.read_text())
        except Exception as e:  # ruamel raises many types; all mean "not YAML"
            raise ConfigError("-", f"{path} is not valid YAML: {e}") from e
        if not isinstance(data, dict):
            raise ConfigError("-", f"{path} must be a mapping at the top level")
        cfg = cls(data, path)
        cfg.validate()
        return cfg

    def get(self, key: str, default: Any = _MISSING) -> Any:
        node: Any = self.data
        for part in key.split("."):
            if not isinstance(node, dict) or part not in node:
                if default is _MISSING:
                    raise ConfigError(key, "is missing")
                return default
            node = node[part]
        return node

    def __getitem__(self, key: str) -> Any:
        return self.get(key)

    def set(self, key: str, value: Any) -> None:
        node = self.data
        *parents, last = key.split(".")
        for part in parents:
            node = node.setdefault(part, {})
        node[last] = value

    def _require(self, key: str, kind: type | tuple[type, ...]) -> Any:
        value = self.get(key)
        if not isinstance(value, kind) or isinstance(value, bool) and kind is int:
            names = kind.__name__ if isinstance(kind, type) else " or ".join(k.__name__ for k in kind)
            raise ConfigError(key, f"must be {names}, not {type(value).__name__}")
        return value

    def validate(self) -> None:
        """Check every key the core reads. Raises ConfigError naming the first bad key."""
        for key in ("homeserver.address", "appservice.address", "appservice.public_url"):
            url = self._require(key, str)
            if not re.match(r"^https?://[^/\s]+", url):
                raise ConfigError(key, f"must be an http(s) URL, not {url!r}")
        domain = self._require("homeserver.domain", str)
        if not re.match(r"^[A-Za-z0-9.\-]+(:\d+)?$", domain):
            raise ConfigError("homeserver.domain", f"{domain!r} is not a server name")
        self._require("homeserver.verify_ssl", bool)
        puppet_token = self.get("homeserver.double_puppet_as_token", "")
        if puppet_token is None:
            puppet_token = ""
        if not isinstance(puppet_token, str):
            raise ConfigError("homeserver.double_puppet_as_token", "must be str (empty: no double puppeting)")
        if puppet_token and puppet_token.strip().lower() in PLACEHOLDERS:
            raise ConfigError("homeserver.double_puppet_as_token", "is a placeholder: put the as_token of the "
                              "double-puppeting registration there, or leave it empty")
        if puppet_token and puppet_token == self.get("appservice.as_token", None):
            raise ConfigError("homeserver.double_puppet_as_token", "must be another registration's as_token, "
                              "not this bridge's own")
        self._require("appservice.hostname", str)
        port = self._require("appservice.port", int)
        if not 0 < port < 65536:
            raise ConfigError("appservice.port", f"{port} is not a TCP port")
        self._require("appservice.id", str)
        bot = self._require("appservice.bot.username", str)
        if not re.match(r"^[a-z0-9._=\-/]+$", bot):
            raise ConfigError("appservice.bot.username", f"{bot!r} is not a valid Matrix localpart")
        for key in SECRET_KEYS:
            value = self._require(key, str)
            if value.strip().lower() in PLACEHOLDERS:
                raise ConfigError(key, "is a placeholder: run `caliopen init` or put a random value there")
        try:
            if len(base64.urlsafe_b64decode(self["bridge.secret_key"])) != 32:
                raise ValueError
        except ValueError:
            raise ConfigError("bridge.secret_key", "must be 32 bytes in URL-safe base64") from None
        db_url = self._require("database.url", str)
        if not db_url.startswith(("sqlite:", "postgres://", "postgresql://")):
            raise ConfigError("database.url", "must start with sqlite:, postgres:// or postgresql://")
        self._require("database.auto_migrate", bool)
        perms = self._require("bridge.permissions", dict)
        for who, level in perms.items():
            if level not in LEVELS:
                raise ConfigError(f"bridge.permissions.{who}", f"must be one of {', '.join(LEVELS)}")
        self._require("bridge.encryption.allow_unencrypted", bool)
        self._require("bridge.send_retries", int)
        self._require("bridge.send_retry_delay", (int, float))
        if self._require("provisioning.enabled", bool):
            secret = self._require("provisioning.shared_secret", str)
            if secret.strip().lower() in PLACEHOLDERS or secret == "disable":
                raise ConfigError("provisioning.shared_secret", "is a placeholder: put a random value there")
        self._require("metrics.enabled", bool)
        level = self._require("logging.level", str)
        if level.upper() not in ("DEBUG", "INFO", "WARNING", "ERROR"):
            raise ConfigError("logging.level", f"{level!r} is not DEBUG, INFO, WARNING or ERROR")
        if self.get("logging.format", "text") not in ("text", "json"):
            raise ConfigError("logging.format", "must be text or json")
        networks = self._require("networks", dict)
        prefixes: dict[str, str] = {}
        for name, section in networks.items():
            base = f"networks.{name}"
            if not isinstance(section, dict):
                raise ConfigError(base, "must be a mapping")
            self._require(f"{base}.enabled", bool)
            if name not in KNOWN_NETWORKS and "module" not in section:
                raise ConfigError(base, f"unknown network (known: {', '.join(KNOWN_NETWORKS)})")
            if section["enabled"] and KNOWN_NETWORKS.get(name, "x") is None and "module" not in section:
                raise ConfigError(f"{base}.enabled", f"the {name} network is not available in this version")
            prefix = self._require(f"{base}.ghost_prefix", str)
            if not re.match(r"^[a-z0-9._=\-/]+$", prefix):
                raise ConfigError(f"{base}.ghost_prefix", f"{prefix!r} is not a valid localpart prefix")
            for other, p in prefixes.items():
                if p.startswith(prefix) or prefix.startswith(p):
                    raise ConfigError(f"{base}.ghost_prefix", f"overlaps with networks.{other}.ghost_prefix")
            prefixes[name] = prefix
            self._require(f"{base}.displayname_template", str)

    # --- derived values -----------------------------------------------------------------

    @property
    def bot_mxid(self) -> str:
        return f"@{self['appservice.bot.username']}:{self['homeserver.domain']}"

    def enabled_networks(self) -> dict[str, dict[str, Any]]:
        return {n: dict(s) for n, s in self["networks"].items() if s.get("enabled")}

    def network_module(self, name: str) -> str:
        section = self["networks"][name]
        module = section.get("module") or KNOWN_NETWORKS.get(name)
        if not module:
            raise ConfigError(f"networks.{name}", "has no implementation in this version")
        return str(module)

    def permission(self, mxid: str) -> str | None:
        """The user's level: the user ID's entry, else the server's, else "*"; None: no access."""
        perms = self["bridge.permissions"]
        server = mxid.split(":", 1)[1] if ":" in mxid else ""
        for key in (mxid, server, "*"):
            if key in perms:
                return str(perms[key])
        return None

    def registration(self) -> dict[str, Any]:
        """The appservice registration the homeserver loads (one for every network)."""
        domain = re.escape(self["homeserver.domain"])
        users = [{"exclusive": True, "regex": f"^@{re.escape(self['appservice.bot.username'])}:{domain}$"}]
        for name in self["networks"]:
            prefix = re.escape(self[f"networks.{name}.ghost_prefix"])
            users.append({"exclusive": True, "regex": f"^@{prefix}.+:{domain}$"})
        return {
            "id": self["appservice.id"],
            "url": self["appservice.address"],
            "as_token": self["appservice.as_token"],
            "hs_token": self["appservice.hs_token"],
            "sender_localpart": self["appservice.sender_localpart"],
            "rate_limited": False,
            "namespaces": {"users": users, "aliases": [], "rooms": []},
            "de.sorunome.msc2409.push_ephemeral": True,
            "receive_ephemeral": True,
        }

    def double_puppet_registration(self, as_token: str | None = None) -> dict[str, Any]:
        """The second, tiny registration that lets the bridge act as the local users (no I/O).

        Its users namespace covers every user of the homeserver without claiming them
        (``exclusive: false``) and it has no URL (the homeserver sends it nothing). Its
        ``as_token`` goes into ``homeserver.double_puppet_as_token``; ``as_token`` defaults to
        that value.
        """
        token = as_token if as_token is not None else self.get("homeserver.double_puppet_as_token", "")
        if not token:
            raise ConfigError("homeserver.double_puppet_as_token", "is empty: double puppeting is off")
        domain = re.escape(self["homeserver.domain"])
        return {
            "id": f"{self['appservice.id']}-doublepuppet",
            "url": None,
            "as_token": token,
            "hs_token": random_token(),
            "sender_localpart": random_token(16).lower().replace("-", "").replace("_", ""),
            "rate_limited": False,
            "namespaces": {"users": [{"exclusive": False, "regex": f"^@.*:{domain}$"}], "aliases": [], "rooms": []},
        }

    def dump(self) -> str:
        buf = io.StringIO()
        _yaml().dump(self.data, buf)
        return buf.getvalue()

    def save(self, path: Path | None = None) -> None:
        target = path or self.path
        assert target is not None
        target.write_text(self.dump())


def random_token(n: int = 32) -> str:
    return secrets.token_urlsafe(n)


def generate_config(homeserver_url: str | None = None, domain: str | None = None) -> Config:
    """The example config with fresh random secrets (not yet validated)."""
    cfg = Config(_yaml().load(EXAMPLE.read_text()))
    if homeserver_url:
        cfg.set("homeserver.address", homeserver_url)
    if domain:
        cfg.set("homeserver.domain", domain)
        perms = cfg["bridge.permissions"]
        if "example.org" in perms:
            del perms["example.org"]
            perms[domain] = "user"
    cfg.set("appservice.as_token", random_token())
    cfg.set("appservice.hs_token", random_token())
    cfg.set("appservice.sender_localpart", "caliopen_" + secrets.token_hex(8))
    cfg.set("bridge.secret_key", base64.urlsafe_b64encode(secrets.token_bytes(32)).decode())
    cfg.set("provisioning.shared_secret", random_token())
    return cfg


def write_registration(cfg: Config, path: Path, registration: dict[str, Any] | None = None) -> None:
    """Write the bridge's registration (or the given one, e.g. the double-puppeting one) to ``path``."""
    buf = io.StringIO()
    y = YAML()
    y.default_flow_style = False
    y.dump(registration if registration is not None else cfg.registration(), buf)
    path.write_text("# Appservice registration for Caliopen; written by `caliopen registration`.\n" + buf.getvalue())
