"""An email end-to-end stack: its own Synapse and Caliopen process, on the rig's mail servers.

The session's shared bridges cannot trust the rig's self-signed certificate nor be SIGKILLed
without disturbing other tests, so email end-to-end tests run their own: a Synapse with one
registration, and a bridge with only the email network, configured for the rig
(``tls_ca_file``, a large ``initial_sync_messages``, short reconnect delays).
"""

from __future__ import annotations

import asyncio
import itertools
from collections.abc import Callable
from pathlib import Path
from typing import Any

from bridges.sandbox.synapse import Synapse, free_port
from tests.rig.bridge import BridgeProcess, make_bridge_config
from tests.rig.fixtures import make_nio_user
from tests.rig.mailservers import MailServers
from tests.rig.nio_client import NioUser

DOMAIN = "caliopen.localhost"
_tags = itertools.count(1)


class EmailStack:
    """Synapse + bridge (email only) + the mail servers, for one test module."""

    def __init__(self, root: Path, servers: MailServers, **email: Any) -> None:
        self.root = root
        self.servers = servers
        self.tag = f"em{next(_tags)}"
        self.port = free_port()
        section = {
            "enabled": True,
            "tls_ca_file": str(servers.ca_file),
            "initial_sync_messages": 1000,
            "verify_dkim": False,
            "reconnect_max_delay": 3.0,
            "allow_plaintext_loopback": True,
            **email,
        }
        self.config = make_bridge_config(root / "bridge", tag=self.tag, domain=DOMAIN,
                                         homeserver_url=f"http://127.0.0.1:{self.port}", db_url=None,
                                         networks={"email": section})
        self.bridge = BridgeProcess(self.config)
        self.synapse: Synapse | None = None
        self.users: list[NioUser] = []

    async def start(self, synapse_factory: Callable[..., Any]) -> None:
        self.synapse = await synapse_factory(
            appservice_files=[self.root / "bridge" / "appservice.yaml"], server_name=DOMAIN, port=self.port)
        await self.bridge.start()

    async def stop(self) -> None:
        for user in self.users:
            await user.close()
        code = await self.bridge.stop()
        if self.synapse is not None:
            await self.synapse.stop()
        assert code == 0, f"the bridge did not stop cleanly ({code}):\n{self.bridge.log_tail()}"

    async def user(self, name: str) -> NioUser:
        assert self.synapse is not None
        user = await make_nio_user(self.synapse, name, self.root / "nio")
        self.users.append(user)
        return user

    def login_values(self, address: str, password: str | None = None, **over: str) -> dict[str, str]:
        s = self.servers
        return {
            "email": address, "display_name": "", "imap_host": s.host, "imap_port": str(s.imaps_port),
            "imap_security": "tls", "smtp_host": s.host, "smtp_port": str(s.submission_port),
            "smtp_security": "starttls", "username": "",
            "password": password if password is not None else s.password(address), **over,
        }

    async def login(self, user_mxid: str, address: str, **over: str) -> str:
        """Log ``user_mxid`` in to ``address`` over provisioning; returns the login ID."""
        status, step = await self.bridge.provision("POST", "/login/start/email.password", user_mxid)
        assert status == 200, step
        status, done = await self.bridge.provision(
            "POST", f"/login/step/{step['login_id']}/{step['step_id']}/user_input", user_mxid,
            json=self.login_values(address, **over))
        assert status == 200 and done["type"] == "complete", done
        return str(done["complete"]["user_login_id"])

    async def login_state(self, user_mxid: str, login_id: str) -> dict[str, Any]:
        status, who = await self.bridge.provision("GET", "/whoami", user_mxid)
        assert status == 200, who
        (login,) = [lg for lg in who["logins"] if lg["id"] == login_id]
        return dict(login["state"])

    async def wait_login_state(self, user_mxid: str, login_id: str, state: str, timeout: float = 60) -> dict[str, Any]:
        deadline = asyncio.get_running_loop().time() + timeout
        while True:
            current = await self.login_state(user_mxid, login_id)
            if current["state_event"] == state:
                return current
            if asyncio.get_running_loop().time() > deadline:
                raise TimeoutError(f"login {login_id} is {current}, not {state}")
            await asyncio.sleep(0.2)


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
