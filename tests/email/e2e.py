"""Helpers of the email end-to-end tests, which run on the session's Synapse, mail servers and
bridges (tests/conftest.py).

The session's bridges trust the mail servers' certificate and import a whole test mailbox at
a login's first sync. Each test makes its own mailboxes (``mailservers.add_user``) and Matrix
users (``nio_users``). :class:`EmailLogins` logs users in over the provisioning API and logs
every one of them out at the end of the test, so that the shared bridges do not go on watching
mailboxes no test looks at any more.
"""

from __future__ import annotations

import asyncio
from collections.abc import Callable
from typing import Any

from tests.rig.bridge import BridgeProcess
from tests.rig.mailservers import MailServers


class EmailLogins:
    """Logins of Matrix users to mailboxes of ``servers``, on any of the session's bridges."""

    def __init__(self, servers: MailServers) -> None:
        self.servers = servers
        self._users: list[tuple[BridgeProcess, str]] = []

    def values(self, address: str, password: str | None = None, **over: str) -> dict[str, str]:
        """The login form for ``address`` (implicit-TLS IMAP, STARTTLS submission); no I/O."""
        s = self.servers
        return {
            "email": address, "display_name": "", "imap_host": s.host, "imap_port": str(s.imaps_port),
            "imap_security": "tls", "smtp_host": s.host, "smtp_port": str(s.submission_port),
            "smtp_security": "starttls", "username": "",
            "password": password if password is not None else s.password(address), **over,
        }

    def track(self, bridge: BridgeProcess, user_mxid: str) -> None:
        """Log out every login ``user_mxid`` has on ``bridge`` at the end of the test (for
        logins made some other way, e.g. by chat)."""
        if (bridge, user_mxid) not in self._users:
            self._users.append((bridge, user_mxid))

    async def login(self, bridge: BridgeProcess, user_mxid: str, address: str, **over: str) -> str:
        """Log ``user_mxid`` in to ``address`` over provisioning; returns the login ID.
        ``over`` replaces fields of the form. Raises AssertionError when the bridge refuses."""
        self.track(bridge, user_mxid)
        status, step = await bridge.provision("POST", "/login/start/email.password", user_mxid)
        assert status == 200, step
        status, done = await bridge.provision(
            "POST", f"/login/step/{step['login_id']}/{step['step_id']}/user_input", user_mxid,
            json=self.values(address, **over))
        assert status == 200 and done["type"] == "complete", done
        return str(done["complete"]["user_login_id"])

    async def state(self, bridge: BridgeProcess, user_mxid: str, login_id: str) -> dict[str, Any]:
        """The login's state as the provisioning API reports it: ``state_event`` and ``error``."""
        status, who = await bridge.provision("GET", "/whoami", user_mxid)
        assert status == 200, who
        (login,) = [lg for lg in who["logins"] if lg["id"] == login_id]
        return dict(login["state"])

    async def wait_state(self, bridge: BridgeProcess, user_mxid: str, login_id: str, state: str,
                         timeout: float = 60) -> dict[str, Any]:
        """Poll until the login is in ``state``; raises TimeoutError after ``timeout`` seconds."""
        deadline = asyncio.get_running_loop().time() + timeout
        while True:
            current = await self.state(bridge, user_mxid, login_id)
            if current["state_event"] == state:
                return current
            if asyncio.get_running_loop().time() > deadline:
                raise TimeoutError(f"login {login_id} is {current}, not {state}")
            await asyncio.sleep(0.2)

    async def logout_all(self) -> None:
        """Log out every login of the tracked users (provisioning I/O). A bridge that is not
        running is skipped: the test that stopped it has failed already."""
        users, self._users = self._users, []
        for bridge, user_mxid in users:
            if bridge.proc is None or bridge.proc.returncode is not None:
                continue
            status, who = await bridge.provision("GET", "/whoami", user_mxid)
            assert status == 200, who
            for login in who["logins"]:
                if login["network"] == "email":
                    status, body = await bridge.provision("POST", f"/logout/{login['id']}", user_mxid)
                    assert status == 200, body


def log_offset(bridge: BridgeProcess) -> int:
    """Where the bridge's log ends now, to read what it logs from here on with :func:`log_since`."""
    return bridge.log_path.stat().st_size if bridge.log_path.exists() else 0


def log_since(bridge: BridgeProcess, offset: int) -> str:
    """What the bridge logged after ``offset`` (from :func:`log_offset`)."""
    with open(bridge.log_path, "rb") as log:
        log.seek(offset)
        return log.read().decode(errors="replace")


def room_named(name: str) -> Callable[[dict[str, Any]], bool]:
    """An invite predicate: the room's name is ``name``."""

    def check(invite: dict[str, Any]) -> bool:
        return any(s.get("type") == "m.room.name" and (s.get("content") or {}).get("name") == name
                   for s in invite["state"])

    return check


def body_has(text: str) -> Callable[[dict[str, Any]], bool]:
    return lambda e: text in str((e.get("content") or {}).get("body", ""))


def msgtype_is(msgtype: str) -> Callable[[dict[str, Any]], bool]:
    return lambda e: (e.get("content") or {}).get("msgtype") == msgtype


def thread_of(event: dict[str, Any]) -> str | None:
    rel = (event.get("content") or {}).get("m.relates_to") or {}
    return rel.get("event_id") if rel.get("rel_type") == "m.thread" else None
