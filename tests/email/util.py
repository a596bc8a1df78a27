"""Helpers shared by the email tests."""

from __future__ import annotations

import asyncio
import time
from collections.abc import Awaitable, Callable
from typing import TypeVar

from bridges.email.imap import Security, ServerSettings
from tests.rig.mailservers import MailServers

T = TypeVar("T")


def imap_settings(
    servers: MailServers, address: str, password: str | None = None, security: Security = Security.TLS, **kw: object
) -> ServerSettings:
    """IMAP settings for a rig user (TLS port unless ``security`` says otherwise)."""
    port = servers.imaps_port if security == Security.TLS else servers.imap_port
    return ServerSettings(
        host=servers.host, port=port, security=security, username=address,
        password=password if password is not None else servers.password(address),
        ssl_context=servers.ssl_context(),
        allow_plaintext_loopback=bool(kw.pop("allow_plaintext_loopback", security == Security.PLAIN)),
        **{"timeout": 30.0, **kw},  # type: ignore[arg-type]
    )


def smtp_settings(
    servers: MailServers, address: str, password: str | None = None, security: Security = Security.STARTTLS
) -> ServerSettings:
    """Submission settings for a rig user (STARTTLS on the submission port)."""
    return ServerSettings(
        host=servers.host, port=servers.submission_port, security=security, username=address,
        password=password if password is not None else servers.password(address),
        ssl_context=servers.ssl_context(), timeout=30.0,
    )


async def eventually(check: Callable[[], Awaitable[T]], timeout: float = 30.0, interval: float = 0.05) -> T:
    """Poll ``check`` until it returns something truthy; return it. Raises TimeoutError."""
    deadline = time.monotonic() + timeout
    while True:
        result = await check()
        if result:
            return result
        if time.monotonic() > deadline:
            raise TimeoutError(f"condition not met within {timeout}s (last: {result!r})")
        await asyncio.sleep(interval)
