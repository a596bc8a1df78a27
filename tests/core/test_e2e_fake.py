"""End to end on the fake network: a real Synapse, a real bridge process, a decrypting client.

A user DMs the bot, logs in through the management room, receives a remote message decrypted
in an encrypted portal, replies, and the bridge is SIGKILLed and restarted without losing or
duplicating anything. The same runs on SQLite and on PostgreSQL.
"""

from __future__ import annotations

import asyncio


from tests.conftest import unique


def direct(invite: dict) -> bool:
    """A 1:1 portal: unnamed (the login's space, also invited, has a name)."""
    return not any(s.get("type") == "m.room.name" for s in invite["state"])


def body_is(text: str):
    return lambda e: e.get("content", {}).get("body") == text


def body_has(text: str):
    return lambda e: text in str(e.get("content", {}).get("body", ""))


async def login_via_chat(user, bridge, fake_remote, password: str = "hunter2") -> tuple[str, str]:
    """DM the bot, log in to the fake network by chat; returns (management room, remote username)."""
    account = unique("acct")
    fake_remote.add_account(account, password, name=f"Remote {account}")
    mgmt = await user.create_dm(bridge.bot_mxid)
    await user.wait_for_message(mgmt, body_has("management room"), timeout=30)
    await user.send_text(mgmt, "login fake")
    await user.wait_for_message(mgmt, body_has("Send your username"))
    await user.send_text(mgmt, account)
    await user.wait_for_message(mgmt, body_has("Send your password"))
    secret_event = await user.send_text(mgmt, password)
    await user.wait_for_message(mgmt, body_has("Logged in to fake"), timeout=30)
    # The message that carried the password is redacted on the server.
    raw = await user.get_raw_event(mgmt, secret_event)
    assert raw.get("unsigned", {}).get("redacted_because") or not raw.get("content"), raw
    return mgmt, account


async def test_round_trip_and_crash(any_bridge, nio_users, fake_remote):
    bridge = any_bridge
    alice = await nio_users("alice")
    mgmt, account = await login_via_chat(alice, bridge, fake_remote)

    # Remote → Matrix, in a new encrypted portal.
    fake_remote.push(account, "dm:bob", "bob", "hello from bob", sender_name="Bob Remote")
    room = await alice.wait_for_invite(direct, timeout=30)
    evt = await alice.wait_for_message(room, body_is("hello from bob"), timeout=30)
    raw = await alice.get_raw_event(room, evt["event_id"])
    assert raw["type"] == "m.room.encrypted"
    assert evt["content"]["org.caliopen.privacy"] == {"transport": "fake", "end_to_end": False}
    assert "bob" in evt["sender"]

    # Matrix → remote: the fake network gets the plaintext.
    await alice.send_text(room, "hi bob, from matrix")
    sent = await fake_remote.wait_sent(
        lambda m: m["text"] == "hi bob, from matrix" and m["account"] == account, timeout=30)
    assert sent["conversation"] == "dm:bob"

    # SIGKILL; messages arrive while the bridge is down; restart.
    await bridge.kill()
    fake_remote.push(account, "dm:bob", "bob", "sent while the bridge was down")
    fake_remote.push(account, "dm:carol", "carol", "carol too")
    await bridge.start()
    await alice.wait_for_message(room, body_is("sent while the bridge was down"), timeout=40)
    carol_room = await alice.wait_for_invite(direct, timeout=40)
    await alice.wait_for_message(carol_room, body_is("carol too"), timeout=30)

    # Matrix → remote still works after the restart, and nothing was bridged twice.
    await alice.send_text(room, "after restart")
    await fake_remote.wait_sent(lambda m: m["text"] == "after restart" and m["account"] == account, timeout=30)
    await asyncio.sleep(1.5)
    bodies = [e.get("content", {}).get("body") for e in alice.events(room)]
    assert bodies.count("hello from bob") == 1
    assert bodies.count("sent while the bridge was down") == 1
    assert [m["text"] for m in fake_remote.sent if m["account"] == account].count("hi bob, from matrix") == 1
    # Even at DEBUG, no message body and no password reaches the log.
    log = bridge.log_text()
    for secret in ("hello from bob", "hi bob, from matrix", "sent while the bridge was down", "hunter2"):
        assert secret not in log
