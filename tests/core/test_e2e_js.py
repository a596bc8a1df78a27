"""The round trip once more with matrix-js-sdk and its Rust crypto (the crypto Element uses)."""

from __future__ import annotations

import pytest

from tests.conftest import unique
from tests.rig.js_client import JsUser, js_available

pytestmark = pytest.mark.skipif(not js_available(), reason="Node 22 and matrix-js-sdk are installed by `make test`")


async def test_js_sdk_round_trip(bridge, synapse, fake_remote):
    name = unique("jsuser")
    password = "js-" + unique("pw")
    mxid = await synapse.register_user(name, password)
    account = unique("jsacct")
    fake_remote.add_account(account, "pw")
    login_id = await bridge.login_fake(mxid, account, "pw")
    assert login_id.startswith("fake-")
    js = await JsUser.start(synapse.url, mxid, password)
    try:
        status, created = await bridge.provision("POST", "/create_dm/hana", mxid, json={})
        assert status == 200, created
        room = created["room_id"]
        await js.join(room)
        fake_remote.push(account, "dm:hana", "hana", "hello element-style client")
        evt = await js.wait_message(room, "hello element-style client", timeout=30)
        assert evt["encrypted"] is True and "hana" in evt["sender"]
        await js.send_text(room, "answer from matrix-js-sdk")
        sent = await fake_remote.wait_sent(lambda m: m["account"] == account and m["text"] == "answer from matrix-js-sdk")
        assert sent["conversation"] == "dm:hana"
    finally:
        await js.close()
