"""The ``networks.sms`` config section. Every key is optional except the core's.

Capabilities: none (configuration only).

::

    sms:
        enabled: true
        ghost_prefix: sms_
        displayname_template: "{name} (SMS)"
        default_country: FR            # region for numbers typed without +country code
        public_url: ""                 # base URL the gateways call; default appservice.public_url
        backends: [smsgate, twilio, gammu]
        max_media_size: 20971520       # bytes, per MMS attachment
        http: {attempts: 3, first_delay: 0.5, timeout: 30}
        smsgate:
            default_url: https://api.sms-gate.app/3rdparty/v1
            max_webhook_age: 300       # seconds; older signed webhooks are refused
        twilio:
            api_url: https://api.twilio.com
            configure_number: true     # point the number's incoming-message webhook at the bridge
        gammu:
            poll_interval: 1.0
            modems:                    # set up by the admin: a modem is one person's number
                usb0:
                    inbox: /var/spool/gammu/inbox
                    outbox: /var/spool/gammu/outbox
                    sent: /var/spool/gammu/sent
                    error: /var/spool/gammu/error
                    log: /var/log/gammu-smsd.log      # optional; pairs delivery reports exactly
                    users: ["@alice:example.org"]     # who may log in with it (required)

:meth:`SmsConfig.from_section` does no I/O and raises
:class:`bridges.core.errors.ConfigError` naming the bad key.
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import phonenumbers

from bridges.core.errors import ConfigError

from .backends.base import RetryPolicy
from .backends.smsgate import CLOUD_URL
from .backends.twilio import API_URL

BASE = "networks.sms"
BACKENDS = ("smsgate", "twilio", "gammu")
_URL = re.compile(r"^https?://[^/\s]+")


@dataclass(frozen=True)
class Modem:
    name: str
    inbox: Path
    outbox: Path
    sent: Path
    error: Path
    users: tuple[str, ...]
    log: Path | None = None
    done: Path | None = None


@dataclass(frozen=True)
class SmsConfig:
    default_country: str | None = None
    public_url: str | None = None
    backends: tuple[str, ...] = BACKENDS
    max_media_size: int = 20 * 1024 * 1024
    http: RetryPolicy = field(default_factory=RetryPolicy)
    smsgate_default_url: str = CLOUD_URL
    smsgate_max_age: float = 300
    twilio_api_url: str = API_URL
    twilio_configure_number: bool = True
    gammu_poll_interval: float = 1.0
    modems: dict[str, Modem] = field(default_factory=dict)

    @classmethod
    def from_section(cls, section: dict[str, Any]) -> SmsConfig:
        """Read and check the section. Raises ConfigError naming the bad key."""
        country = _opt_str(section, "default_country")
        if country is not None:
            country = country.upper()
            if country not in phonenumbers.SUPPORTED_REGIONS:
                raise ConfigError(f"{BASE}.default_country", f"{country!r} is not a two-letter country code")
        public_url = _opt_url(section, "public_url")
        backends = section.get("backends", list(BACKENDS))
        if not isinstance(backends, list) or not backends or any(b not in BACKENDS for b in backends):
            raise ConfigError(f"{BASE}.backends", f"must be a list drawn from {', '.join(BACKENDS)}")
        smsgate = _sub(section, "smsgate")
        twilio = _sub(section, "twilio")
        gammu = _sub(section, "gammu")
        http = _sub(section, "http")
        modems = {}
        raw_modems = gammu.get("modems") or {}
        if not isinstance(raw_modems, dict):
            raise ConfigError(f"{BASE}.gammu.modems", "must be a mapping of modem names to directories")
        for name, raw in raw_modems.items():
            modems[str(name)] = _modem(str(name), raw)
        return cls(
            default_country=country,
            public_url=public_url,
            backends=tuple(backends),
            max_media_size=_int(section, "max_media_size", 20 * 1024 * 1024, BASE),
            http=RetryPolicy(attempts=_int(http, "attempts", 3, f"{BASE}.http"),
                             first_delay=_num(http, "first_delay", 0.5, f"{BASE}.http"),
                             timeout=_num(http, "timeout", 30, f"{BASE}.http")),
            smsgate_default_url=_opt_url(smsgate, "default_url", f"{BASE}.smsgate") or CLOUD_URL,
            smsgate_max_age=_num(smsgate, "max_webhook_age", 300, f"{BASE}.smsgate"),
            twilio_api_url=_opt_url(twilio, "api_url", f"{BASE}.twilio") or API_URL,
            twilio_configure_number=_bool(twilio, "configure_number", True, f"{BASE}.twilio"),
            gammu_poll_interval=_num(gammu, "poll_interval", 1.0, f"{BASE}.gammu"),
            modems=modems,
        )

    def modems_for(self, user_mxid: str) -> list[Modem]:
        return [m for m in self.modems.values() if user_mxid in m.users]


def _sub(section: dict[str, Any], key: str) -> dict[str, Any]:
    value = section.get(key) or {}
    if not isinstance(value, dict):
        raise ConfigError(f"{BASE}.{key}", "must be a mapping")
    return value


def _opt_str(section: dict[str, Any], key: str, base: str = BASE) -> str | None:
    value = section.get(key)
    if value in (None, ""):
        return None
    if not isinstance(value, str):
        raise ConfigError(f"{base}.{key}", "must be a string")
    return value


def _opt_url(section: dict[str, Any], key: str, base: str = BASE) -> str | None:
    value = _opt_str(section, key, base)
    if value is not None and not _URL.match(value):
        raise ConfigError(f"{base}.{key}", f"must be an http(s) URL, not {value!r}")
    return value.rstrip("/") if value else None


def _num(section: dict[str, Any], key: str, default: float, base: str) -> float:
    value = section.get(key, default)
    if isinstance(value, bool) or not isinstance(value, (int, float)) or value < 0:
        raise ConfigError(f"{base}.{key}", "must be a positive number")
    return float(value)


def _int(section: dict[str, Any], key: str, default: int, base: str) -> int:
    value = section.get(key, default)
    if isinstance(value, bool) or not isinstance(value, int) or value < 1:
        raise ConfigError(f"{base}.{key}", "must be a positive whole number")
    return value


def _bool(section: dict[str, Any], key: str, default: bool, base: str) -> bool:
    value = section.get(key, default)
    if not isinstance(value, bool):
        raise ConfigError(f"{base}.{key}", "must be true or false")
    return value


def _modem(name: str, raw: Any) -> Modem:
    base = f"{BASE}.gammu.modems.{name}"
    if not isinstance(raw, dict):
        raise ConfigError(base, "must be a mapping")
    paths: dict[str, Path | None] = {}
    for key in ("inbox", "outbox", "sent", "error", "log", "done"):
        value = raw.get(key)
        if value in (None, ""):
            if key in ("log", "done"):
                paths[key] = None
                continue
            raise ConfigError(f"{base}.{key}", "is missing (the directory from gammu-smsd's smsdrc)")
        if not isinstance(value, str) or not value.startswith("/"):
            raise ConfigError(f"{base}.{key}", "must be an absolute path")
        paths[key] = Path(value)
    users = raw.get("users")
    if not isinstance(users, list) or not users or not all(isinstance(u, str) and u.startswith("@") for u in users):
        raise ConfigError(f"{base}.users", "must list the Matrix user IDs who may use this modem")
    return Modem(name=name, users=tuple(users), **paths)  # type: ignore[arg-type]
