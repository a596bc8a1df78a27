"""SMS end to end: a real Synapse, a real bridge process, a decrypting client, and on the other
side the SMSGate and Twilio emulators (spec-checked) and a real gammu-smsd.

The bridge gets its own Synapse here (its registration must be loaded at the homeserver's start),
with the SMS network configured to use the emulators and the modem.
"""

from __future__ import annotations

import asyncio
import json
import re
import secrets
import time
from collections.abc import AsyncIterator
from dataclasses import dataclass
from typing import Any

import pytest
import pytest_asyncio

from bridges.sandbox.synapse import Synapse, free_port
from tests.emulators.smsgate import SmsGateEmulator, sign
from tests.emulators.twilio import TwilioEmulator
from tests.rig import gammu as rig
from tests.rig.bridge import BridgeProcess, make_bridge_config
from tests.rig.nio_client import NioUser

DOMAIN = "caliopen.localhost"
ALICE = "smsalice"
PNG = b"\x89PNG\r\n\x1a\n" + secrets.token_bytes(300)


@dataclass
class Stack:
    synapse: Synapse
    bridge: BridgeProcess
    alice: NioUser
    smsgate: SmsGateEmulator
    twilio: TwilioEmulator
    smsd: rig.GammuSmsd | None
    logins: dict[str, str]


def direct(invite: dict[str, Any]) -> bool:
    """A one-to-one portal's invite: it has no room name (each login's space is named)."""
    return not any(s.get("type") == "m.room.name" for s in invite["state"])


def body_is(text: str):  # type: ignore[no-untyped-def]
    return lambda e: e.get("content", {}).get("body") == text


def body_has(text: str):  # type: ignore[no-untyped-def]
    return lambda e: text in str(e.get("content", {}).get("body", ""))


async def provision_login(bridge: BridgeProcess, user: str, flow: str, values: dict[str, str]) -> str:
    status, step = await bridge.provision("POST", f"/login/start/sms.{flow}", user)
    assert status == 200, step
    status, done = await bridge.provision(
        "POST", f"/login/step/{step['login_id']}/{step['step_id']}/user_input", user, json=values)
    assert status == 200 and done["type"] == "complete", done
    return str(done["complete"]["user_login_id"])


@pytest_asyncio.fixture(scope="module", loop_scope="session")
async def stack(tmp_path_factory: pytest.TempPathFactory, synapse_factory) -> AsyncIterator[Stack]:  # type: ignore[no-untyped-def]
    root = tmp_path_factory.mktemp("sms-e2e")
    smsgate = SmsGateEmulator()
    twilio = TwilioEmulator(numbers=("+15005550006", "+15005550007"))
    await smsgate.start()
    await twilio.start()
    smsd = rig.GammuSmsd(root / "smsd") if rig.available() else None
    if smsd:
        await smsd.start()
    port = free_port()
    alice_id = f"@{ALICE}:{DOMAIN}"
    section: dict[str, Any] = {
        "enabled": True, "default_country": "FR", "twilio": {"api_url": twilio.base_url},
        "http": {"attempts": 2, "first_delay": 0.05, "timeout": 10},
    }
    if smsd:
        section["gammu"] = {"poll_interval": 0.2, "modems": {"usb0": {
            "inbox": str(smsd.inbox), "outbox": str(smsd.outbox), "sent": str(smsd.sent), "error": str(smsd.error),
            "log": str(smsd.log), "users": [alice_id]}}}
    cfg = make_bridge_config(root / "bridge", tag="smse2e", domain=DOMAIN, homeserver_url=f"http://127.0.0.1:{port}",
                             db_url=None, networks={"sms": section})
    synapse = await synapse_factory(appservice_files=[cfg.path.parent / "appservice.yaml"], server_name=DOMAIN,
                                    port=port)
    bridge = BridgeProcess(cfg)
    await bridge.start()
    alice = await NioUser.create(synapse, ALICE, root / "nio")
    logins = {
        "smsgate": await provision_login(bridge, alice_id, "smsgate", {
            "phone_number": "06 11 11 11 11", "country": "FR", "base_url": smsgate.base_url,
            "username": smsgate.username, "password": smsgate.password, "signing_key": smsgate.signing_key}),
        "twilio": await provision_login(bridge, alice_id, "twilio", {
            "phone_number": next(iter(twilio.numbers)), "country": "", "account_sid": twilio.account_sid,
            "auth_token": twilio.auth_token}),
    }
    if smsd:
        logins["gammu"] = await provision_login(bridge, alice_id, "gammu", {
            "phone_number": "06 22 22 22 22", "country": "FR", "modem": "usb0"})
    deadline = time.monotonic() + 30
    while len(smsgate.webhooks) < 4 or not twilio.numbers[next(iter(twilio.numbers))]["sms_url"]:
        assert time.monotonic() < deadline, "the SMS logins never registered their webhooks"
        await asyncio.sleep(0.1)
    yield Stack(synapse, bridge, alice, smsgate, twilio, smsd, logins)
    await alice.close()
    code = await bridge.stop()
    if smsd:
        await smsd.stop()
    await smsgate.stop()
    await twilio.stop()
    assert code == 0, f"the bridge did not stop cleanly ({code}):\n{bridge.log_tail()}"
    assert smsgate.violations == [] and twilio.violations == []


async def test_smsgate_round_trip_with_delivery_states(stack: Stack) -> None:
    alice, smsgate = stack.alice, stack.smsgate
    _, calls = await smsgate.inject_sms("+33633333301", "Coucou depuis mon téléphone 📱")
    assert [c.status for c in calls] == [200]
    room = await alice.wait_for_invite(direct, timeout=40)
    evt = await alice.wait_for_message(room, body_is("Coucou depuis mon téléphone 📱"), timeout=40)
    raw = await alice.get_raw_event(room, evt["event_id"])
    assert raw["type"] == "m.room.encrypted"
    privacy = evt["content"]["org.caliopen.privacy"]
    assert privacy["transport"] == "carrier_plaintext" and privacy["backend"] == "smsgate"
    assert privacy["third_party"] is False

    text = "Réponse depuis Matrix, assez longue pour tenir sur plusieurs SMS ✓ " * 4
    await alice.send_text(room, text)
    sent = await smsgate.wait_sent(lambda m: m.text == text, timeout=40)
    assert sent.phone_numbers == ["+33633333301"]
    # Statuses arrive out of order and twice; then a later message fails and says why.
    for event in ("sms:delivered", "sms:sent", "sms:delivered"):
        assert [c.status for c in await smsgate.report(sent.id, event)] == [200]
    await alice.send_text(room, "this one fails")
    failing = await smsgate.wait_sent(lambda m: m.text == "this one fails", timeout=40)
    await smsgate.report(failing.id, "sms:failed", reason="RESULT_ERROR_NO_SERVICE")
    await alice.wait_for_message(room, body_has("was not delivered"), timeout=40)

    # The same webhook again (a retry by the app) is not bridged twice.
    await smsgate.inject_sms("+33633333301", "only once", message_id="dup-1")
    await smsgate.inject_sms("+33633333301", "only once", message_id="dup-1")
    await alice.wait_for_message(room, body_is("only once"), timeout=40)
    await asyncio.sleep(1.0)
    bodies = [e.get("content", {}).get("body") for e in alice.events(room)]
    assert bodies.count("only once") == 1 and bodies.count("Coucou depuis mon téléphone 📱") == 1

    # Forged: refused, nothing bridged.
    hook = smsgate.hook_url()
    body = json.dumps({"event": "sms:received", "payload": {"messageId": "forged", "message": "forged!",
                                                            "phoneNumber": "+33633333301"}}).encode()
    stamp = str(int(time.time()))
    forged = await smsgate.post_raw(hook, body, {"X-Signature": sign("guess", body, stamp), "X-Timestamp": stamp})
    assert forged.status == 403


async def test_twilio_mms_both_ways(stack: Stack) -> None:
    alice, twilio = stack.alice, stack.twilio
    _, call = await twilio.inject_sms("+33633333302", "Une photo", media=[(PNG, "image/png")])
    assert call.status == 200
    room = await alice.wait_for_invite(direct, timeout=40)
    await alice.wait_for_message(room, body_is("Une photo"), timeout=40)
    image = await alice.wait_for_message(room, lambda e: e.get("content", {}).get("msgtype") == "m.image",
                                         timeout=40)
    assert await alice.download_decrypted(image["content"]) == PNG
    assert image["content"]["org.caliopen.privacy"]["third_party"] is True

    reply = b"\x89PNG\r\n\x1a\n" + secrets.token_bytes(500)
    await alice.send_file(room, reply, "reply.png", "image/png")
    msg = await twilio.wait_sent(lambda m: m.to == "+33633333302" and bool(m.media), timeout=40)
    assert msg.media[0][2] == reply and msg.body == ""
    assert [(s, d) for _, s, _, d in twilio.fetched_media] == [(200, reply)]
    await twilio.status(msg.sid, "undelivered", error_code=30005)
    await alice.wait_for_message(room, body_has("does not exist"), timeout=40)


async def test_start_chat_and_bad_numbers(stack: Stack) -> None:
    alice, smsgate, bridge = stack.alice, stack.smsgate, stack.bridge
    user = alice.user_id
    status, body = await bridge.provision("POST", f"/create_dm/{'06 33 33 33 03'}?login_id={stack.logins['smsgate']}",
                                          user)
    assert status == 200, body
    room = await alice.wait_for_invite(direct, timeout=40)
    await alice.send_text(room, "first message from Matrix")
    sent = await smsgate.wait_sent(lambda m: m.text == "first message from Matrix", timeout=40)
    assert sent.phone_numbers == ["+33633333303"]
    status, body = await bridge.provision("POST", f"/create_dm/{'not-a-number'}?login_id={stack.logins['smsgate']}",
                                          user)
    assert status == 400 and "not a phone number" in body["error"]


async def test_gateway_down_then_clear_error(stack: Stack) -> None:
    alice, smsgate = stack.alice, stack.smsgate
    await smsgate.inject_sms("+33633333304", "before the outage")
    room = await alice.wait_for_invite(direct, timeout=40)
    await alice.wait_for_message(room, body_is("before the outage"), timeout=40)
    smsgate.fail_next_sends(1000)
    try:
        await alice.send_text(room, "lost in the outage")
        await alice.wait_for_message(room, body_has("Your message was not sent"), timeout=60)
    finally:
        smsgate.fail_next_sends(0)
    assert not any(m.text == "lost in the outage" for m in smsgate.sent)


@pytest.mark.skipif(not rig.available(), reason="gammu-smsd is not installed")
async def test_gammu_round_trip(stack: Stack) -> None:
    alice, smsd = stack.alice, stack.smsd
    assert smsd is not None
    smsd.inject_sms("+33633333305", "Depuis le modem GSM ✓")
    room = await alice.wait_for_invite(direct, timeout=40)
    evt = await alice.wait_for_message(room, body_is("Depuis le modem GSM ✓"), timeout=40)
    assert evt["content"]["org.caliopen.privacy"]["backend"] == "gammu"
    await alice.send_text(room, "Réponse par le modem")
    sent = await smsd.wait_sent("Réponse par le modem", timeout=40)
    assert sent.number == "+33633333305"


async def test_sigkill_after_the_ack_loses_nothing(stack: Stack) -> None:
    alice, smsgate, bridge = stack.alice, stack.smsgate, stack.bridge
    await smsgate.inject_sms("+33633333306", "opening the room")
    room = await alice.wait_for_invite(direct, timeout=40)
    await alice.wait_for_message(room, body_is("opening the room"), timeout=40)
    # Acknowledged means stored: kill the bridge the moment the webhook is answered.
    message_id, calls = await smsgate.inject_sms("+33633333306", "acknowledged just before the crash")
    await bridge.kill()
    assert [c.status for c in calls] == [200]
    # While the bridge is down the app cannot deliver; it retries the same message afterwards.
    _, down = await smsgate.inject_sms("+33633333306", "sent while the bridge was down", message_id="while-down")
    assert [c.status for c in down] == [0]
    await bridge.start()
    _, retried = await smsgate.inject_sms("+33633333306", "sent while the bridge was down", message_id="while-down")
    assert [c.status for c in retried] == [200]
    await alice.wait_for_message(room, body_is("acknowledged just before the crash"), timeout=60)
    await alice.wait_for_message(room, body_is("sent while the bridge was down"), timeout=60)
    await asyncio.sleep(1.0)
    bodies = [e.get("content", {}).get("body") for e in alice.events(room)]
    assert bodies.count("acknowledged just before the crash") == 1
    assert bodies.count("sent while the bridge was down") == 1


async def test_login_and_start_chat_by_chat_commands(stack: Stack) -> None:
    alice, twilio, bridge = stack.alice, stack.twilio, stack.bridge
    mgmt = await alice.create_dm(bridge.bot_mxid)
    await alice.wait_for_message(mgmt, body_has("management room"), timeout=40)
    await alice.send_text(mgmt, "login sms twilio")
    answers = [("Send your phone number", "+15005550007"), ("Send your country", "-"),
               ("Send your Twilio Account SID", twilio.account_sid), ("Send your Twilio Auth Token", twilio.auth_token)]
    secret_event = ""
    for prompt, value in answers:
        await alice.wait_for_message(mgmt, body_has(prompt), timeout=40)
        secret_event = await alice.send_text(mgmt, value)
    done = await alice.wait_for_message(mgmt, body_has("Logged in to sms"), timeout=40)
    raw = await alice.get_raw_event(mgmt, secret_event)  # the Auth Token's message is redacted
    assert raw.get("unsigned", {}).get("redacted_because") or not raw.get("content"), raw
    login_id = re.search(r"\(login (sms-[0-9a-f]+)\)", done["content"]["body"]).group(1)  # type: ignore[union-attr]
    await asyncio.sleep(0.5)
    await alice.send_text(mgmt, f"start-chat sms +33633333307 {login_id}")
    await alice.wait_for_message(mgmt, body_has("you are invited"), timeout=40)
    room = await alice.wait_for_invite(direct, timeout=40)
    await alice.send_text(room, "started from the bot")
    msg = await twilio.wait_sent(lambda m: m.body == "started from the bot", timeout=40)
    assert (msg.from_, msg.to) == ("+15005550007", "+33633333307")
