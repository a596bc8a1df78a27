"""Email end to end on the session's SQLite bridge: a mailbox's history imported into the right
rooms and threads, and the bridge SIGKILLed in the middle of an import bridging every message
exactly once (and running again for the tests after it)."""

from __future__ import annotations

import asyncio
import datetime as dt
import re
import time
from collections import defaultdict
from typing import Any

import aiohttp
import pytest

from tests.conftest import unique
from tests.email.e2e import EmailLogins, thread_of
from tests.rig.bridge import BridgeProcess
from tests.rig.mailservers import MailServers, simple_message
from tests.rig.nio_client import NioUser

T0 = dt.datetime(2024, 5, 1, 8, 0, tzinfo=dt.timezone.utc)


def history(me: str, tag: str, people: int, per_person: int) -> list[tuple[bytes, dt.datetime]]:
    """``people`` correspondents, each one thread of ``per_person`` mails (a root and replies
    from both sides), interleaved in time. Bodies are ``{tag}-{person}-{n}``."""
    out = []
    for n in range(per_person):
        for p in range(people):
            when = T0 + dt.timedelta(minutes=n * people + p)
            root = f"<{tag}-{p}-0@hist.example>"
            frm = f"Person {tag} {p} <{tag}-p{p}@hist.example>"
            raw = simple_message(
                from_addr=frm, to=me, subject=f"Topic {p}" if n == 0 else f"Re: Topic {p}",
                body=f"{tag}-{p}-{n}\n", message_id=f"<{tag}-{p}-{n}@hist.example>", date=when,
                in_reply_to=root if n else None, references=[root] if n else None)
            out.append((raw, when))
    return out


def bridged(user: NioUser, tag: str) -> dict[str, list[tuple[str, dict[str, Any]]]]:
    """Every event whose body is one of the history's, by body: [(room, event)]."""
    found: dict[str, list[tuple[str, dict[str, Any]]]] = defaultdict(list)
    pattern = re.compile(rf"\b{re.escape(tag)}-\d+-\d+\b")
    for room in list(user.client.rooms):
        for event in user.events(room):
            if (event.get("content") or {}).get("msgtype") not in ("m.text", "m.notice"):
                continue
            body = str((event.get("content") or {}).get("body", ""))
            for key in set(pattern.findall(body)):  # a thread root's body starts with its subject
                found[key].append((room, event))
    return found


async def wait_bridged(user: NioUser, tag: str, count: int, timeout: float) -> dict[str, list[tuple[str, dict]]]:
    deadline = time.monotonic() + timeout
    while True:
        found = bridged(user, tag)
        if len(found) >= count:
            return found
        if time.monotonic() > deadline:
            raise TimeoutError(f"{len(found)} of {count} messages bridged")
        await asyncio.sleep(0.5)


async def email_messages_bridged(bridge: BridgeProcess) -> int:
    """How many email messages the bridge process has bridged to Matrix since it started (its
    /metrics; a message counts once it is stored)."""
    async with aiohttp.ClientSession() as http:
        async with http.get(f"{bridge.url}/metrics") as resp:
            assert resp.status == 200
            text = await resp.text()
    found = re.search(r'^caliopen_remote_messages_total\{network="email"\} (\S+)$', text, re.MULTILINE)
    return int(float(found.group(1))) if found else 0


async def wait_messages_bridged(bridge: BridgeProcess, count: int, timeout: float) -> int:
    """Poll the bridge's count of bridged email messages until it reaches ``count``; return it.
    Raises TimeoutError."""
    deadline = time.monotonic() + timeout
    while True:
        done = await email_messages_bridged(bridge)
        if done >= count:
            return done
        if time.monotonic() > deadline:
            raise TimeoutError(f"{done} of {count} messages bridged")
        await asyncio.sleep(0.02)


def check_rooms_and_threads(found: dict[str, list[tuple[str, dict]]], tag: str, people: int, per_person: int) -> None:
    assert all(len(v) == 1 for v in found.values()), [k for k, v in found.items() if len(v) > 1][:5]
    rooms: dict[int, set[str]] = defaultdict(set)
    for p in range(people):
        root_room, root_event = found[f"{tag}-{p}-0"][0]
        for n in range(per_person):
            room, event = found[f"{tag}-{p}-{n}"][0]
            rooms[p].add(room)
            if n:
                assert thread_of(event) == root_event["event_id"], (p, n)
    assert all(len(r) == 1 for r in rooms.values())
    assert len({next(iter(r)) for r in rooms.values()}) == people


@pytest.mark.timeout(900)
async def test_history_of_500_messages_in_50_rooms(bridge: BridgeProcess, nio_users: Any, email_logins: EmailLogins,
                                                   mailservers: MailServers) -> None:
    me = mailservers.add_user(unique("hist"))
    tag = unique("h")
    people, per_person = 50, 10
    await asyncio.to_thread(mailservers.append_many, me, "INBOX", history(me, tag, people, per_person))
    user = await nio_users("historian")
    await email_logins.login(bridge, user.user_id, me)
    found = await wait_bridged(user, tag, people * per_person, timeout=780)
    check_rooms_and_threads(found, tag, people, per_person)


@pytest.mark.timeout(900)
async def test_sigkill_during_import_bridges_each_message_once(bridge: BridgeProcess, nio_users: Any,
                                                               email_logins: EmailLogins,
                                                               mailservers: MailServers) -> None:
    me = mailservers.add_user(unique("kill"))
    tag = unique("k")
    people, per_person = 20, 10
    await asyncio.to_thread(mailservers.append_many, me, "INBOX", history(me, tag, people, per_person))
    user = await nio_users("survivor")
    before = await email_messages_bridged(bridge)
    login_id = await email_logins.login(bridge, user.user_id, me)
    try:
        # The client sees messages later than the bridge stores them: watch the bridge itself,
        # and kill it a tenth of the way in.
        await wait_messages_bridged(bridge, before + people * per_person // 10, timeout=200)
        await bridge.kill()
        # Mail keeps arriving while the bridge is down.
        late = simple_message(from_addr=f"Person {tag} 0 <{tag}-p0@hist.example>", to=me, subject="Re: Topic 0",
                              body=f"{tag}-0-{per_person}\n", message_id=f"<{tag}-0-{per_person}@hist.example>",
                              in_reply_to=f"<{tag}-0-0@hist.example>", references=[f"<{tag}-0-0@hist.example>"])
        await asyncio.to_thread(mailservers.deliver, late, me)
        await bridge.start()
    finally:
        if bridge.proc is None or bridge.proc.returncode is not None:
            await bridge.start()  # the session's bridge stays up for the other tests
    await wait_bridged(user, tag, people * per_person + 1, timeout=600)
    await asyncio.sleep(3)  # anything bridged twice would show up now
    found = bridged(user, tag)
    check_rooms_and_threads(found, tag, people, per_person)
    assert len(found[f"{tag}-0-{per_person}"]) == 1
    assert thread_of(found[f"{tag}-0-{per_person}"][0][1]) == found[f"{tag}-0-0"][0][1]["event_id"]
    # The restarted bridge bridged part of the history, not only the late mail: the kill did
    # interrupt the import.
    assert await email_messages_bridged(bridge) > 1, "the import finished before the kill: nothing was tested"
    state = await email_logins.wait_state(bridge, user.user_id, login_id, "CONNECTED")
    assert state["error"] is None
