"""HTTP requests to a gateway, retried when the failure is transient.

Connection errors, timeouts, HTTP 5xx and 429 are retried with a doubling delay; after the last
attempt :class:`Unreachable` is raised. Any other status is returned to the caller, who decides
what it means.
"""

from __future__ import annotations

import asyncio
import base64
import json
import logging
from dataclasses import dataclass
from typing import Any

import aiohttp
from multidict import CIMultiDictProxy

from .base import RetryPolicy

log = logging.getLogger("caliopen.sms.http")


class Unreachable(Exception):
    """The gateway did not answer usefully after every attempt. ``str()`` is a plain sentence."""


@dataclass(frozen=True)
class HttpResult:
    status: int
    body: bytes
    headers: CIMultiDictProxy[str]

    def json(self) -> Any:
        """The body as JSON, or None when it is not JSON."""
        try:
            return json.loads(self.body)
        except (ValueError, UnicodeDecodeError):
            return None


def basic_auth(user: str, password: str) -> str:
    """The value of an ``Authorization`` header for HTTP basic auth."""
    return "Basic " + base64.b64encode(f"{user}:{password}".encode()).decode()


def _transient(status: int) -> bool:
    return status >= 500 or status == 429


async def request(
    session: aiohttp.ClientSession,
    method: str,
    url: str,
    *,
    policy: RetryPolicy,
    what: str,
    auth: tuple[str, str] | None = None,
    **kwargs: Any,
) -> HttpResult:
    """Make one request, retrying transient failures (I/O).

    ``what`` names the gateway in messages ("SMSGate at 192.168.1.5"); ``auth`` is a
    (user, password) pair sent as HTTP basic auth. Raises :class:`Unreachable` when every
    attempt failed for a transient reason.
    """
    if auth is not None:
        headers = dict(kwargs.pop("headers", None) or {})
        headers["Authorization"] = basic_auth(*auth)
        kwargs["headers"] = headers
    delay = policy.first_delay
    problem = ""
    for attempt in range(1, policy.attempts + 1):
        try:
            async with session.request(method, url, timeout=aiohttp.ClientTimeout(total=policy.timeout),
                                       **kwargs) as resp:
                body = await resp.read()
                if not _transient(resp.status):
                    return HttpResult(resp.status, body, resp.headers)
                problem = f"HTTP {resp.status}"
        except asyncio.TimeoutError:
            problem = "no answer in time"
        except aiohttp.ClientError as e:
            problem = f"connection failed ({type(e).__name__})"
        log.info("%s %s: attempt %d of %d failed: %s", method, what, attempt, policy.attempts, problem)
        if attempt < policy.attempts:
            await asyncio.sleep(delay)
            delay *= 2
    raise Unreachable(f"{what} did not answer ({problem}) after {policy.attempts} attempts")
