"""The test rig itself: sandbox Synapse and decrypting nio users."""

from __future__ import annotations

import json
import os
import time
from pathlib import Path
from typing import Any

import aiohttp
import pytest

from bridges.sandbox.synapse import Synapse, SynapseError
from tests.rig.nio_client import NioUser


def is_message(body: str) -> Any:
    def check(event: dict[str, Any]) -> bool:
        return event.get("type") == "m.room.message" and event["content"].get("body") == body

    return check


async def dm_pair(nio_users: Any) -> tuple[NioUser, NioUser, str]:
    alice = await nio_users("alice")
    bob = await nio_users("bob")
    room_id = await alice.create_dm(bob.user_id)
    joined = await bob.wait_for_invite(lambda inv: inv["inviter"] == alice.user_id)
    assert joined == room_id
    await alice.wait_for_member(room_id, bob.user_id)
    return alice, bob, room_id


async def test_synapse_answers_and_registers(synapse: Synapse) -> None:
    assert synapse.running
    assert synapse.url.startswith("http://127.0.0.1:")
    assert synapse.start_seconds is not None
    mxid = await synapse.register_user("rig-carol", "pw-carol", displayname="Carol")
    assert mxid == "@rig-carol:caliopen.localhost"
    login = await synapse.login("rig-carol", "pw-carol")
    assert login["user_id"] == mxid
    assert login["access_token"] and login["device_id"]
    with pytest.raises(SynapseError, match="M_USER_IN_USE"):
        await synapse.register_user("rig-carol", "other")
    with pytest.raises(SynapseError, match="403"):
        await synapse.login("rig-carol", "wrong password")


async def test_config_is_loopback_only_and_unthrottled(synapse: Synapse) -> None:
    config = synapse.homeserver_config()
    assert [lst["bind_addresses"] for lst in config["listeners"]] == [["127.0.0.1"]]
    assert config["trusted_key_servers"] == []
    assert config["rc_message"]["per_second"] >= 1000
    assert config["rc_login"]["failed_attempts"]["burst_count"] >= 1000
    assert "experimental_features" not in config


async def test_encrypted_text_and_files_both_ways(nio_users: Any) -> None:
    alice, bob, room_id = await dm_pair(nio_users)
    assert alice.client.rooms[room_id].encrypted

    first = await alice.send_text(room_id, "Bonjour Bob, ça va ?")
    got = await bob.wait_for_message(room_id, is_message("Bonjour Bob, ça va ?"))
    assert got["event_id"] == first
    assert got["sender"] == alice.user_id
    assert bob.event(first).decrypted  # type: ignore[union-attr]
    raw = await bob.get_raw_event(room_id, first)
    assert raw["type"] == "m.room.encrypted"
    assert "Bonjour" not in str(raw["content"])

    reply = await bob.send_text(
        room_id, "Très bien", reply_to=first, formatted_body="<b>Très</b> bien"
    )
    got = await alice.wait_for_message(room_id, is_message("Très bien"))
    assert got["event_id"] == reply
    assert got["content"]["formatted_body"] == "<b>Très</b> bien"
    assert got["content"]["m.relates_to"]["m.in_reply_to"]["event_id"] == first
    assert (await alice.get_raw_event(room_id, reply))["type"] == "m.room.encrypted"

    in_thread = await alice.send_text(room_id, "dans le fil", thread_root=first)
    got = await bob.wait_for_message(room_id, is_message("dans le fil"))
    assert got["content"]["m.relates_to"]["rel_type"] == "m.thread"
    assert got["content"]["m.relates_to"]["event_id"] == first
    # Relations stay readable by the server so that it can group threads.
    raw = await bob.get_raw_event(room_id, in_thread)
    assert raw["content"]["m.relates_to"]["event_id"] == first

    document = os.urandom(70_000) + "fin ✓".encode()
    file_event = await alice.send_file(room_id, document, "rapport.pdf", "application/pdf")
    got = await bob.wait_for_message(room_id, is_message("rapport.pdf"))
    assert got["event_id"] == file_event
    assert got["content"]["msgtype"] == "m.file"
    assert "url" not in got["content"]
    assert await bob.download_decrypted(got["content"]) == document
    # What the media repository holds is ciphertext.
    assert await bob.download(got["content"]["file"]["url"]) != document
    assert (await bob.get_raw_event(room_id, file_event))["type"] == "m.room.encrypted"

    image = b"\x89PNG\r\n\x1a\n" + os.urandom(5000)
    image_event = await bob.send_file(room_id, image, "photo.png", "image/png")
    got = await alice.wait_for_message(room_id, lambda e: e.get("event_id") == image_event)
    assert got["content"]["msgtype"] == "m.image"
    assert got["content"]["info"] == {"mimetype": "image/png", "size": len(image)}
    assert await alice.download_decrypted(got["content"]) == image

    assert alice.undecrypted(room_id) == []
    assert bob.undecrypted(room_id) == []


async def test_unencrypted_room_and_history_before_the_call(nio_users: Any) -> None:
    alice = await nio_users("alice")
    bob = await nio_users("bob")
    room_id = await alice.create_room(invite=[bob.user_id], encrypted=False, name="plain")
    assert await bob.wait_for_invite() == room_id
    await alice.wait_for_member(room_id, bob.user_id)
    sent = [await alice.send_text(room_id, f"message {i}") for i in range(5)]
    data = b"plain bytes"
    file_event = await alice.send_file(room_id, data, "note.txt", "text/plain")
    got = await bob.wait_for_message(room_id, lambda e: e.get("event_id") == file_event)
    assert await bob.download_decrypted(got["content"]) == data
    assert "file" not in got["content"]
    # Earlier messages were received before these calls and are still found.
    for i, event_id in enumerate(sent):
        found = await bob.wait_for_message(room_id, is_message(f"message {i}"), timeout=1)
        assert found["event_id"] == event_id
    assert (await bob.get_raw_event(room_id, sent[0]))["type"] == "m.room.message"


async def test_wait_for_message_times_out(nio_users: Any) -> None:
    alice = await nio_users("alice")
    room_id = await alice.create_room()
    await alice.send_text(room_id, "only this")
    began = time.monotonic()
    with pytest.raises(TimeoutError):
        await alice.wait_for_message(room_id, is_message("never sent"), timeout=1.5)
    assert time.monotonic() - began < 10


async def test_broken_config_fails_fast_with_the_log(tmp_path: Path) -> None:
    missing = tmp_path / "no-such-registration.yaml"
    server = Synapse(tmp_path / "hs", appservice_files=[missing])
    began = time.monotonic()
    with pytest.raises(SynapseError) as info:
        await server.start(timeout=60)
    assert time.monotonic() - began < 55
    assert "no-such-registration.yaml" in str(info.value)
    assert not server.running


async def test_new_device_reads_new_messages_not_old_ones(
    synapse: Synapse, nio_users: Any, tmp_path: Path
) -> None:
    alice, bob, room_id = await dm_pair(nio_users)
    before = await alice.send_text(room_id, "before the new device")
    await bob.wait_for_message(room_id, is_message("before the new device"))
    localpart = bob.user_id.split(":")[0][1:]
    bob2 = await NioUser.create(synapse, localpart, tmp_path / "bob2", register=False)
    try:
        assert bob2.device_id != bob.device_id
        assert room_id in bob2.client.rooms
        # The old session was never shared with the new device.
        assert before in bob2.undecrypted(room_id)
        with pytest.raises(TimeoutError, match="still undecryptable"):
            await bob2.wait_for_message(room_id, is_message("before the new device"), timeout=1)
        await alice.wait_until_device_known(bob.user_id, bob2.device_id)
        after = await alice.send_text(room_id, "after the new device")
        got = await bob2.wait_for_message(room_id, is_message("after the new device"))
        assert got["event_id"] == after
        assert (await bob.wait_for_message(room_id, is_message("after the new device")))
    finally:
        await bob2.close()


async def test_appservice_registration_and_experimental_features(
    synapse_factory: Any, tmp_path: Path
) -> None:
    as_token = "as-" + os.urandom(8).hex()
    registration = tmp_path / "registration.yaml"
    registration.write_text(
        json.dumps(
            {
                "id": "rig-test",
                "url": None,
                "as_token": as_token,
                "hs_token": "hs-" + os.urandom(8).hex(),
                "sender_localpart": "rig-bot-" + os.urandom(4).hex(),
                "namespaces": {
                    "users": [{"exclusive": True, "regex": "@rigghost_.*:caliopen\\.localhost"}]
                },
                "org.matrix.msc3202": True,
            }
        )
    )
    server = await synapse_factory(
        appservice_files=[registration], experimental_appservice_e2ee=True
    )
    assert server.homeserver_config()["experimental_features"][
        "msc2409_to_device_messages_enabled"
    ]
    async with aiohttp.ClientSession() as http:
        body = {"type": "m.login.application_service", "username": "rigghost_1"}
        async with http.post(
            server.url + "/_matrix/client/v3/register",
            json=body,
            headers={"Authorization": f"Bearer {as_token}"},
        ) as resp:
            assert resp.status == 200, await resp.text()
            assert (await resp.json())["user_id"] == "@rigghost_1:caliopen.localhost"
        async with http.post(
            server.url + "/_matrix/client/v3/register",
            json={**body, "username": "notaghost"},
            headers={"Authorization": f"Bearer {as_token}"},
        ) as resp:
            assert resp.status == 400
            assert (await resp.json())["errcode"] == "M_EXCLUSIVE"
    # The exclusive namespace is closed to the shared-secret registration of real users too.
    with pytest.raises(SynapseError, match="M_EXCLUSIVE"):
        await server.register_user("rigghost_2", "pw")
