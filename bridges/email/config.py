"""The ``networks.email`` config section. No I/O besides checking that a CA file exists.

Capabilities: none (configuration only).

Keys (all optional but ``enabled``; the core reads ``enabled``, ``ghost_prefix``,
``displayname_template`` and ``module`` itself):

- ``initial_sync_messages``: messages imported per folder at a login's first sync (100).
- ``initial_sync_days``: when more than 0, a login's first sync imports only mail that arrived
  in the last that many days (by IMAP INTERNALDATE; the server compares dates, so a day's mail
  comes whole); ``initial_sync_messages`` still caps each folder, to its most recent (0).
- ``sync_folders``: folders to bridge; ``\\Sent`` stands for the Sent folder found by
  SPECIAL-USE or its usual names (``["INBOX", "\\Sent"]``).
- ``max_attachment_size``: bytes; larger attachments become a note with name and size (25 MiB).
- ``inline_message_size``: bytes; mail up to this size travels in the queued event itself,
  larger mail is fetched again from IMAP when it is converted (1 MiB).
- ``idle_timeout``: seconds an IMAP IDLE lasts before it is re-issued; servers drop it after
  29 minutes (1500, at most 1740).
- ``poll_interval``: seconds between NOOPs when a server has no IDLE (60).
- ``fetch_batch_size``: messages per ``UID FETCH`` (50).
- ``reconnect_max_delay``: seconds; the reconnect backoff stops growing there (300).
- ``timeout``: seconds an IMAP or SMTP command may take (60).
- ``allow_plaintext_loopback``: allow IMAP/SMTP without TLS to 127.0.0.1/::1/localhost (false).
- ``tls_ca_file``: a PEM file of extra CAs to trust (a private mail server's own CA) ("").
- ``verify_dkim``: verify DKIM signatures with DNS (true).
- ``save_sent``: whether what is sent from Matrix is APPENDed to the Sent folder: ``auto``
  (not on servers that file submitted mail themselves, Gmail's by its ``X-GM-EXT-1``
  capability; elsewhere only when Sent holds no mail with its Message-ID yet), ``always`` or
  ``never``; ``true`` and ``false`` mean ``always`` and ``never`` (``auto``). A login may
  choose its own when it is made.
"""

from __future__ import annotations

import enum
import ssl
from dataclasses import dataclass, fields
from pathlib import Path
from typing import Any

from ..core.errors import ConfigError

SENT = "\\Sent"
#: Keys of the section that the core reads.
CORE_KEYS = frozenset({"enabled", "ghost_prefix", "displayname_template", "module"})
MAX_IDLE = 29 * 60 - 60


class SaveSent(str, enum.Enum):
    """Whether mail sent from Matrix is filed in the Sent folder (see the module docstring)."""

    AUTO = "auto"
    ALWAYS = "always"
    NEVER = "never"

    @classmethod
    def parse(cls, value: object) -> SaveSent:
        """``auto``, ``always``, ``never`` (any case), or true/false for always/never. No I/O.

        Raises ValueError for anything else.
        """
        if isinstance(value, bool):
            return cls.ALWAYS if value else cls.NEVER
        if isinstance(value, str):
            return cls(value.strip().lower())
        raise ValueError(value)


@dataclass(frozen=True)
class EmailConfig:
    enabled: bool = True
    initial_sync_messages: int = 100
    initial_sync_days: int = 0
    sync_folders: tuple[str, ...] = ("INBOX", SENT)
    max_attachment_size: int = 25 * 1024 * 1024
    inline_message_size: int = 1024 * 1024
    idle_timeout: float = 1500.0
    poll_interval: float = 60.0
    fetch_batch_size: int = 50
    reconnect_max_delay: float = 300.0
    timeout: float = 60.0
    allow_plaintext_loopback: bool = False
    tls_ca_file: str = ""
    verify_dkim: bool = True
    save_sent: SaveSent = SaveSent.AUTO

    @classmethod
    def from_section(cls, section: dict[str, Any] | None, prefix: str = "networks.email") -> EmailConfig:
        """Read and check the section. Raises ConfigError naming the bad key."""
        section = dict(section or {})
        values: dict[str, Any] = {}
        known = {f.name: f for f in fields(cls)}
        for key in section:
            if key not in known and key not in CORE_KEYS:
                raise ConfigError(f"{prefix}.{key}", "is not a setting of the email network")
        for name, f in known.items():
            if name not in section:
                continue
            value = section[name]
            key = f"{prefix}.{name}"
            default = f.default
            if isinstance(default, SaveSent):
                try:
                    value = SaveSent.parse(value)
                except ValueError:
                    raise ConfigError(key, "must be auto, always or never") from None
            elif isinstance(default, bool):
                if not isinstance(value, bool):
                    raise ConfigError(key, "must be true or false")
            elif isinstance(default, int):
                if isinstance(value, bool) or not isinstance(value, int):
                    raise ConfigError(key, "must be a whole number")
                if value < 0:
                    raise ConfigError(key, "must not be negative")
            elif isinstance(default, float):
                if isinstance(value, bool) or not isinstance(value, (int, float)):
                    raise ConfigError(key, "must be a number of seconds")
                if value <= 0:
                    raise ConfigError(key, "must be more than 0")
                value = float(value)
            elif isinstance(default, tuple):
                if not isinstance(value, (list, tuple)) or not all(isinstance(v, str) and v for v in value):
                    raise ConfigError(key, "must be a list of folder names")
                value = tuple(value)
            elif isinstance(default, str):
                if value is None:
                    value = ""
                if not isinstance(value, str):
                    raise ConfigError(key, "must be text")
            values[name] = value
        cfg = cls(**values)
        if cfg.idle_timeout > MAX_IDLE:
            raise ConfigError(f"{prefix}.idle_timeout", f"must be at most {MAX_IDLE:.0f} (servers end IDLE at 29 minutes)")
        if cfg.fetch_batch_size < 1:
            raise ConfigError(f"{prefix}.fetch_batch_size", "must be at least 1")
        if not cfg.sync_folders:
            raise ConfigError(f"{prefix}.sync_folders", "must name at least one folder")
        if cfg.tls_ca_file and not Path(cfg.tls_ca_file).is_file():
            raise ConfigError(f"{prefix}.tls_ca_file", f"{cfg.tls_ca_file} is not a file")
        return cfg

    def ssl_context(self) -> ssl.SSLContext:
        """The context servers' certificates are checked with (system CAs, plus ``tls_ca_file``)."""
        ctx = ssl.create_default_context()
        if self.tls_ca_file:
            ctx.load_verify_locations(cafile=self.tls_ca_file)
        return ctx
