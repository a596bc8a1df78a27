"""Double puppeting: what the user wrote or read on the network with another client.

``pg_bridge`` has a double-puppeting token (its registration is loaded by the session Synapse);
``bridge`` has none. With it, a from-me message is the user's own event (encrypted by the
bridge's device) and a from-me read is the user's own read receipt, and neither comes back to
the network as if the user had acted in Matrix. Without it, a "(you)" ghost sends and reads
are dropped. A wrong token falls back to ghosts.
"""

from __future__ import annotations

import asyncio

import pytest
from mautrix.appservice import AppService

from bridges.config import Config, generate_config
from bridges.core.errors import ConfigError
from bridges.core.ids import ghost_mxid
from bridges.matrix.double_puppet import SOURCE_KEY, DoublePuppets
from bridges.sandbox.synapse import free_port
from tests.conftest import DOMAIN, DOUBLE_PUPPET_TAG
from tests.core.test_e2e_fake import body_is, direct, login_via_chat


def puppeting(bridge) -> bool:  # type: ignore[no-untyped-def]
    return bool(bridge.config.get("homeserver.double_puppet_as_token", ""))


async def test_from_me_message_and_read(any_bridge, nio_users, fake_remote):
    bridge = any_bridge
    alice = await nio_users("alice")
    _, account = await login_via_chat(alice, bridge, fake_remote)
    first = fake_remote.push(account, "dm:bob", "bob", "bob writes first", sender_name="Bob")
    room = await alice.wait_for_invite(direct, timeout=30)
    bob_evt = await alice.wait_for_message(room, body_is("bob writes first"), timeout=30)

    # Written with another client: the user's own message, or a "(you)" ghost's.
    fake_remote.push(account, "dm:bob", account, "written on my phone", members=["bob"], from_me=True)
    mine = await alice.wait_for_message(room, body_is("written on my phone"), timeout=30)
    assert mine["content"]["org.caliopen.from_me"] is True
    raw = await alice.get_raw_event(room, mine["event_id"])
    assert raw["type"] == "m.room.encrypted"
    if puppeting(bridge):
        assert mine["sender"] == alice.user_id
        assert raw["content"][SOURCE_KEY] == bridge.config["appservice.id"]
    else:
        assert mine["sender"] == ghost_mxid(bridge.config["networks.fake.ghost_prefix"], account, DOMAIN)
        assert SOURCE_KEY not in raw["content"]

    # Read with another client: the user's own receipt, or nothing. A later message makes the
    # check ordered: the portal handles the read before it.
    fake_remote.push_read(account, "dm:bob", first, account, from_me=True)
    again = fake_remote.push(account, "dm:bob", "bob", "bob writes again")
    later = await alice.wait_for_message(room, body_is("bob writes again"), timeout=30)
    if puppeting(bridge):
        await alice.wait_for_receipt(room, alice.user_id, bob_evt["event_id"], timeout=30)
    else:
        assert alice.read_receipt(room, alice.user_id) is None

    # Nothing the bridge did as the user comes back to the network: the user's next message
    # and read in Matrix are the first the network gets from this portal.
    await alice.send_text(room, "typed in matrix")
    await fake_remote.wait_sent(lambda m: m["account"] == account and m["text"] == "typed in matrix")
    assert [m["text"] for m in fake_remote.sent if m["account"] == account] == ["typed in matrix"]
    await alice.client.room_read_markers(room, later["event_id"], later["event_id"])
    await alice.wait_for_receipt(room, alice.user_id, later["event_id"], timeout=30)
    reads = await _wait_reads(fake_remote, account, again)
    assert len(reads) == 1 and first in reads[0]["ids"], reads


async def _wait_reads(fake_remote, account: str, last: str, timeout: float = 30) -> list[dict]:  # type: ignore[no-untyped-def]
    """The account's reads on the fake network, once one of them covers message ``last``."""
    loop = asyncio.get_running_loop()
    deadline = loop.time() + timeout
    while loop.time() < deadline:
        reads = [r for r in fake_remote.reads if r["account"] == account]
        if any(last in r["ids"] for r in reads):
            return reads
        await asyncio.sleep(0.05)
    raise AssertionError(f"the fake network got no read receipt covering {last}: {fake_remote.reads}")


async def test_refused_token_falls_back(synapse, bridge_configs, nio_users, caplog):
    """The homeserver's refusals turn double puppeting off (for everyone on a wrong token, for
    one user outside the namespace), with one warning each."""
    alice = await nio_users("alice")
    bob = await nio_users("bob")
    az = AppService(server=synapse.url, domain=DOMAIN, as_token="unused", hs_token="unused",
                    bot_localpart="unused", id="puppet-test")
    await az.start("127.0.0.1", free_port())
    try:
        good = DoublePuppets(az, bridge_configs[DOUBLE_PUPPET_TAG]["homeserver.double_puppet_as_token"], "t")
        assert await good.intent(alice.user_id) is not None
        assert await good.intent("@someone:elsewhere.example") is None
        assert good.enabled and good.active(alice.user_id) is not None

        wrong = DoublePuppets(az, "not-the-token", "t")
        with caplog.at_level("WARNING", logger="caliopen.matrix.puppet"):
            assert await wrong.intent(bob.user_id) is None
            assert await wrong.intent(bob.user_id) is None
        assert not wrong.enabled
        assert len([r for r in caplog.records if "refused double_puppet_as_token" in r.getMessage()]) == 1
        assert await DoublePuppets(az, "", "t").intent(bob.user_id) is None
    finally:
        await az.stop()


def test_config_and_registration() -> None:
    cfg = generate_config("http://127.0.0.1:8008", "example.org")
    cfg.validate()  # empty: off
    reg_cfg = Config(cfg.data)
    reg_cfg.set("homeserver.double_puppet_as_token", "a-real-token")
    reg_cfg.validate()
    reg = reg_cfg.double_puppet_registration()
    assert reg["as_token"] == "a-real-token" and reg["url"] is None and reg["rate_limited"] is False
    assert reg["namespaces"]["users"] == [{"exclusive": False, "regex": r"^@.*:example\.org$"}]
    assert reg["sender_localpart"] != cfg["appservice.bot.username"]
    for bad in ("changeme", cfg["appservice.as_token"]):
        reg_cfg.set("homeserver.double_puppet_as_token", bad)
        with pytest.raises(ConfigError, match="double_puppet_as_token"):
            reg_cfg.validate()
