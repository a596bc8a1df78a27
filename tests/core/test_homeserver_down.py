"""A homeserver that goes down: remote messages wait in the bridge and arrive once it is back."""

from __future__ import annotations

import asyncio

import aiohttp

from tests.core.test_e2e_fake import body_is, direct, login_via_chat


async def test_messages_wait_for_the_homeserver(bridge, synapse, nio_users, fake_remote):
    user = await nio_users("hsdown")
    mgmt, account = await login_via_chat(user, bridge, fake_remote)
    fake_remote.push(account, "dm:ivan", "ivan", "before the outage")
    room = await user.wait_for_invite(direct)
    await user.wait_for_message(room, body_is("before the outage"))

    await synapse.stop()
    try:
        fake_remote.push(account, "dm:ivan", "ivan", "during the outage")
        fake_remote.push(account, "dm:judy", "judy", "new room during the outage")
        await asyncio.sleep(4)  # the bridge tries, fails, keeps the events
        async with aiohttp.ClientSession() as http:
            async with http.get(f"{bridge.url}/_matrix/mau/live") as r:
                assert r.status == 200  # and keeps serving
    finally:
        await synapse.start()
    await user.wait_for_message(room, body_is("during the outage"), timeout=90)
    judy = await user.wait_for_invite(direct, timeout=90)
    await user.wait_for_message(judy, body_is("new room during the outage"), timeout=60)
    assert "Giving up" not in bridge.log_text()
    # Matrix → bridge works again too.
    await user.send_text(mgmt, "ping")
    await user.wait_for_message(mgmt, lambda e: e.get("sender") == bridge.bot_mxid
                                and "Pong" in str(e.get("content", {}).get("body")), timeout=60)
