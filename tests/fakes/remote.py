"""A fake remote network: an HTTP service the fake connector talks to, driven by the tests.

It stands for a chat network so the core can be tested end to end without one: accounts with
passwords, conversations, messages pushed by the test (inbound), and messages the bridge sends
(outbound, recorded). The bridge may run in another process; only HTTP crosses over.
"""

from __future__ import annotations

import asyncio
import base64
import itertools
import time
from dataclasses import dataclass, field
from typing import Any

from aiohttp import web


@dataclass
class Account:
    username: str
    password: str
    name: str
    events: list[dict[str, Any]] = field(default_factory=list)


class FakeRemote:
    def __init__(self) -> None:
        self.accounts: dict[str, Account] = {}
        self.sent: list[dict[str, Any]] = []
        self.reads: list[dict[str, Any]] = []  # read receipts the bridge passed on, in order
        self._ids = itertools.count(1)
        self.fail_sends: list[tuple[int, bool]] = []  # (status, retryable) for the next sends
        self.logins = 0
        self.polls = 0
        self._changed = asyncio.Event()
        self.app = web.Application()
        self.app.router.add_post("/login", self._login)
        self.app.router.add_get("/events", self._events)
        self.app.router.add_post("/send", self._send)
        self.app.router.add_post("/read", self._read)
        self.app.router.add_get("/avatar/{name}", self._avatar)
        self.avatars: dict[str, bytes] = {}
        self._runner: web.AppRunner | None = None
        self.url = ""

    async def start(self) -> None:
        self._runner = web.AppRunner(self.app, access_log=None)
        await self._runner.setup()
        site = web.TCPSite(self._runner, "127.0.0.1", 0)
        await site.start()
        port = site._server.sockets[0].getsockname()[1]  # type: ignore[union-attr]
        self.url = f"http://127.0.0.1:{port}"

    async def stop(self) -> None:
        if self._runner:
            await self._runner.cleanup()

    # --- driven by tests -----------------------------------------------------------------

    def add_account(self, username: str, password: str, name: str | None = None) -> Account:
        acc = Account(username, password, name or username.title())
        self.accounts[username] = acc
        return acc

    def push(self, username: str, conversation: str, sender: str, text: str, *, sender_name: str | None = None,
             media: bytes | None = None, filename: str | None = None, msg_id: str | None = None,
             members: list[str] | None = None, avatar: bytes | None = None, from_me: bool = False) -> str:
        """An inbound message for ``username``'s account. Returns its remote ID.

        ``from_me``: the account's owner wrote it with another client (give the correspondents
        in ``members``)."""
        acc = self.accounts[username]
        mid = msg_id or f"m{next(self._ids)}"
        evt: dict[str, Any] = {
            "seq": len(acc.events) + 1, "id": mid, "conversation": conversation, "sender": sender,
            "sender_name": sender_name or sender.title(), "text": text, "ts": int(time.time() * 1000),
            "members": members or [sender], "from_me": from_me,
        }
        if avatar is not None:
            self.avatars[sender] = avatar
            evt["avatar_id"] = f"{sender}:{len(avatar)}:{avatar[:8].hex()}"
        if media is not None:
            evt["media_b64"] = base64.b64encode(media).decode()
            evt["filename"] = filename or "file.bin"
        acc.events.append(evt)
        self._changed.set()
        return mid

    def push_read(self, username: str, conversation: str, target_id: str, reader: str, *,
                  from_me: bool = False) -> str:
        """``reader`` (the account's owner with another client, if ``from_me``) read message
        ``target_id``. Returns the event's remote ID."""
        acc = self.accounts[username]
        rid = f"r{next(self._ids)}"
        acc.events.append({"seq": len(acc.events) + 1, "kind": "read", "id": rid, "conversation": conversation,
                           "target": target_id, "sender": reader, "from_me": from_me,
                           "ts": int(time.time() * 1000)})
        self._changed.set()
        return rid

    async def wait_sent(self, predicate: Any, timeout: float = 30) -> dict[str, Any]:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            for msg in self.sent:
                if predicate(msg):
                    return msg
            await asyncio.sleep(0.05)
        raise AssertionError(f"nothing matching was sent to the fake network; sent: {len(self.sent)} messages")

    # --- HTTP -----------------------------------------------------------------------------

    def _auth(self, request: web.Request) -> Account:
        user = request.headers.get("X-User", "")
        acc = self.accounts.get(user)
        if acc is None or request.headers.get("X-Password") != acc.password:
            raise web.HTTPUnauthorized(text="bad credentials")
        return acc

    async def _login(self, request: web.Request) -> web.Response:
        body = await request.json()
        acc = self.accounts.get(body.get("username", ""))
        if acc is None or acc.password != body.get("password"):
            return web.json_response({"error": "Wrong username or password"}, status=401)
        self.logins += 1
        return web.json_response({"username": acc.username, "name": acc.name})

    async def _events(self, request: web.Request) -> web.Response:
        acc = self._auth(request)
        self.polls += 1
        since = int(request.query.get("since", "0"))
        wait = float(request.query.get("wait", "0"))
        if wait and not [e for e in acc.events if e["seq"] > since]:
            self._changed.clear()
            try:
                await asyncio.wait_for(self._changed.wait(), wait)
            except asyncio.TimeoutError:
                pass
        return web.json_response({"events": [e for e in acc.events if e["seq"] > since]})

    async def _avatar(self, request: web.Request) -> web.Response:
        data = self.avatars.get(request.match_info["name"])
        if data is None:
            raise web.HTTPNotFound()
        return web.Response(body=data, content_type="image/png")

    async def _read(self, request: web.Request) -> web.Response:
        acc = self._auth(request)
        body = await request.json()
        self.reads.append({**body, "account": acc.username})
        return web.json_response({})

    async def _send(self, request: web.Request) -> web.Response:
        acc = self._auth(request)
        body = await request.json()
        if self.fail_sends:
            status, retryable = self.fail_sends.pop(0)
            return web.json_response({"error": "refused by the fake network", "retryable": retryable}, status=status)
        mid = f"s{next(self._ids)}"
        self.sent.append({**body, "account": acc.username, "id": mid})
        return web.json_response({"id": mid, "ts": int(time.time() * 1000)})
