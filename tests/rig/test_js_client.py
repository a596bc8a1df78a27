"""The second decrypting client: matrix-js-sdk (Rust crypto) against the session's Synapse,
talking to a matrix-nio (vodozemac) user both ways in encrypted rooms.

Uses the ``synapse`` and ``nio_users`` fixtures of tests/conftest.py and tests/rig/fixtures.py.
"""

from __future__ import annotations

import asyncio
import itertools
import logging
import time
import uuid
from urllib.parse import quote
from collections.abc import AsyncIterator, Awaitable, Callable
from typing import Any

import pytest
import pytest_asyncio
from nio.crypto.sessions import OutboundGroupSession

from bridges.sandbox.synapse import Synapse
from tests.rig.js_client import JsClientError, JsUser, js_available
from tests.rig.nio_client import NioUser

log = logging.getLogger(__name__)

pytestmark = pytest.mark.skipif(
    not js_available(), reason="Node 22 / matrix-js-sdk not installed: run npm install in tests/js"
)

PASSWORD = "js-client test password"
_counter = itertools.count(1)

JsUserFactory = Callable[..., Awaitable[JsUser]]


@pytest_asyncio.fixture(loop_scope="session")
async def js_users(synapse: Synapse) -> AsyncIterator[JsUserFactory]:
    """Register a fresh user and start a JS client for it; close them after the test."""
    users: list[JsUser] = []

    async def make(name: str, **kwargs: Any) -> JsUser:
        localpart = f"{name}-js-{next(_counter)}"
        mxid = await synapse.register_user(localpart, PASSWORD)
        began = time.monotonic()
        user = await JsUser.start(synapse.url, mxid, PASSWORD, **kwargs)
        users.append(user)
        log.info("JS client for %s ready in %.2f s", mxid, time.monotonic() - began)
        return user

    try:
        yield make
    finally:
        for user in users:
            await user.close()


def body_is(body: str) -> Callable[[dict[str, Any]], bool]:
    def check(event: dict[str, Any]) -> bool:
        return event.get("type") == "m.room.message" and event["content"].get("body") == body

    return check


def token() -> str:
    return uuid.uuid4().hex[:12]


async def assert_ciphertext_on_server(reader: NioUser, room_id: str, event_id: str, body: str) -> None:
    raw = await reader.get_raw_event(room_id, event_id)
    assert raw["type"] == "m.room.encrypted"
    assert raw["content"]["algorithm"] == "m.megolm.v1.aes-sha2"
    assert "body" not in raw["content"]
    assert body not in str(raw)


async def test_js_dm_with_nio_both_ways(js_users: JsUserFactory, nio_users: Any) -> None:
    alice = await js_users("alice")
    bob = await nio_users("bob")
    assert alice.user_id.startswith("@alice-js-") and alice.device_id

    room_id = await alice.create_dm(bob.user_id)
    assert await bob.wait_for_invite(lambda inv: inv["inviter"] == alice.user_id) == room_id
    assert bob.client.rooms[room_id].encrypted
    await bob.wait_for_member(room_id, alice.user_id)

    # JS -> nio
    out = f"from js {token()}"
    began = time.monotonic()
    event_id = await alice.send_text(room_id, out)
    seen = await bob.wait_for_message(room_id, body_is(out))
    log.info("JS -> nio delivered in %.3f s", time.monotonic() - began)
    assert seen["event_id"] == event_id
    assert seen["sender"] == alice.user_id
    nio_event = bob.event(event_id)
    assert nio_event is not None and nio_event.decrypted
    await assert_ciphertext_on_server(bob, room_id, event_id, out)

    # nio -> JS
    back = f"from nio {token()}"
    began = time.monotonic()
    reply_id = await bob.send_text(room_id, back)
    got = await alice.wait_message(room_id, back)
    log.info("nio -> JS delivered in %.3f s", time.monotonic() - began)
    assert got["eventId"] == reply_id
    assert got["sender"] == bob.user_id
    assert got["type"] == "m.room.message"
    assert got["content"] == {"msgtype": "m.text", "body": back}
    assert got["encrypted"] is True
    await assert_ciphertext_on_server(bob, room_id, reply_id, back)


async def test_js_joins_nio_room_and_finds_earlier_messages(
    js_users: JsUserFactory, nio_users: Any
) -> None:
    carol = await nio_users("carol")
    dave = await js_users("dave")
    room_id = await carol.create_dm(dave.user_id)
    assert await dave.wait_invite(inviter=carol.user_id) == room_id
    await carol.wait_for_member(room_id, dave.user_id)

    first, second = f"first {token()}", f"second {token()}"
    first_id = await carol.send_text(room_id, first)
    await carol.send_text(room_id, second)
    # Both have arrived (and the second was decrypted) before the first is asked for.
    await dave.wait_message(room_id, second)
    got = await dave.wait_message(room_id, first, sender=carol.user_id)
    assert got["eventId"] == first_id and got["encrypted"] is True

    # Messages from JS reach nio, and consecutive JS sends go out under one Megolm session.
    sessions = set()
    for text in (f"js one {token()}", f"js two {token()}"):
        event_id = await dave.send_text(room_id, text)
        seen = await carol.wait_for_message(room_id, body_is(text))
        assert seen["event_id"] == event_id
        await assert_ciphertext_on_server(carol, room_id, event_id, text)
        raw = await carol.get_raw_event(room_id, event_id)
        assert raw["content"]["device_id"] == dave.device_id
        sessions.add(raw["content"]["session_id"])
    assert len(sessions) == 1


async def test_js_client_reports_failures(synapse: Synapse, js_users: JsUserFactory) -> None:
    mxid = await synapse.register_user(f"erin-js-{next(_counter)}", PASSWORD)
    with pytest.raises(JsClientError, match="M_FORBIDDEN"):
        await JsUser.start(synapse.url, mxid, "not the password", timeout=30)

    frank = await js_users("frank")
    with pytest.raises(JsClientError, match="no invite"):
        await frank.wait_invite(timeout=1)
    with pytest.raises(JsClientError, match="M_FORBIDDEN|M_NOT_FOUND"):
        await frank.send_text("!nowhere:caliopen.localhost", "never sent")

    room_id = await frank.create_dm(mxid)
    with pytest.raises(JsClientError, match="no matching message"):
        await frank.wait_message(room_id, "nothing like this", timeout=1)

    # The process dying fails the waiting command at once, with the process's exit code.
    waiting = asyncio.create_task(frank.wait_message(room_id, "never", timeout=60))
    await asyncio.sleep(0)
    frank._proc.kill()
    with pytest.raises(JsClientError, match="exited with code"):
        await asyncio.wait_for(waiting, 20)
    assert not frank.running
    with pytest.raises(JsClientError, match="exited"):
        await frank.send_text(room_id, "after death")


async def test_js_waits_for_a_key_that_comes_after_its_event(
    js_users: JsUserFactory, nio_users: Any
) -> None:
    grace = await nio_users("grace")
    heidi = await js_users("heidi")
    room_id = await grace.create_dm(heidi.user_id)
    assert await heidi.wait_invite(inviter=grace.user_id) == room_id
    await grace.wait_for_member(room_id, heidi.user_id)

    # Encrypt with a Megolm session nobody has yet and post the event without its key; keep
    # the session as it was before encrypting, so that the key shared later starts at index 0.
    olm = grace.client.olm
    assert olm is not None and room_id not in olm.outbound_group_sessions
    session = OutboundGroupSession()
    before = session.pickle()
    session.shared = True
    olm.outbound_group_sessions[room_id] = session
    text = f"early {token()}"
    content = olm.group_encrypt(
        room_id, {"type": "m.room.message", "content": {"msgtype": "m.text", "body": text}}
    )
    olm.outbound_group_sessions[room_id] = OutboundGroupSession.from_pickle(before)
    txn = uuid.uuid4().hex
    sent = await grace._raw(
        "PUT",
        f"/_matrix/client/v3/rooms/{quote(room_id)}/send/m.room.encrypted/{txn}",
        json_body=content,
    )
    event_id = sent["event_id"]

    # The JS client has the event but cannot read it yet.
    with pytest.raises(JsClientError, match=r"[1-9]\d* undecryptable"):
        await heidi.wait_message(room_id, text, timeout=3)

    # A waiter started now is answered once the key arrives.
    waiting = asyncio.create_task(heidi.wait_message(room_id, text, timeout=60))
    if grace.client.should_query_keys:
        await grace.client.keys_query()
    shared = await grace.client.share_group_session(room_id, ignore_unverified_devices=True)
    assert (heidi.user_id, heidi.device_id) in shared.users_shared_with
    got = await waiting
    assert got["eventId"] == event_id
    assert got["encrypted"] is True
    assert got["content"]["body"] == text


async def test_js_back_fills_a_gappy_sync(js_users: JsUserFactory, nio_users: Any) -> None:
    ivan = await nio_users("ivan")
    judy = await js_users("judy", sync_timeline_limit=3, log_level="info")
    room_id = await ivan.create_dm(judy.user_id)
    assert await judy.wait_invite(inviter=ivan.user_id) == room_id
    await ivan.wait_for_member(room_id, judy.user_id)
    await ivan.send_text(room_id, "key shared")
    await judy.wait_message(room_id, "key shared")

    # A burst of events posted at once: more than one /sync of 3 can carry.
    olm = ivan.client.olm
    assert olm is not None
    texts = [f"burst {i} {token()}" for i in range(30)]
    contents = [
        olm.group_encrypt(room_id, {"type": "m.room.message", "content": {"msgtype": "m.text", "body": t}})
        for t in texts
    ]

    async def put(content: dict[str, Any]) -> str:
        path = f"/_matrix/client/v3/rooms/{quote(room_id)}/send/m.room.encrypted/{uuid.uuid4().hex}"
        return str((await ivan._raw("PUT", path, json_body=content))["event_id"])

    event_ids = await asyncio.gather(*(put(c) for c in contents))
    for text, event_id in zip(texts, event_ids):
        got = await judy.wait_message(room_id, text)
        assert got["eventId"] == event_id and got["encrypted"] is True
    assert "back-filling" in judy.stderr_tail()
