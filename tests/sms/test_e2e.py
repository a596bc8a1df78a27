"""SMS end to end: the session's Synapse and bridges, a decrypting client, and on the other side
the SMSGate and Twilio emulators (spec-checked) and a real gammu-smsd.

The session's bridges are configured for the gateways of ``sms_rig`` (tests/conftest.py,
tests/sms/e2e_rig.py). Each test has its own Matrix user (``nio_users``), its own SMSGate
server and fresh Twilio numbers, so its logins never see another test's messages. The gammu
test uses each bridge's modem, which only a fixed user may log in to.
"""

from __future__ import annotations

import asyncio
import json
import re
import secrets
import time
from collections.abc import AsyncIterator, Callable
from pathlib import Path
from typing import Any

import pytest
import pytest_asyncio

from bridges.sandbox.synapse import Synapse, SynapseError
from tests.emulators.smsgate import SmsGateEmulator, sign
from tests.emulators.twilio import TwilioEmulator
from tests.rig import gammu as rig_gammu
from tests.rig.bridge import BridgeProcess
from tests.rig.nio_client import NioUser
from tests.sms.e2e_rig import SmsRig

PNG = b"\x89PNG\r\n\x1a\n" + secrets.token_bytes(300)
SMSGATE_HOOKS = {"sms:received", "sms:sent", "sms:delivered", "sms:failed", "mms:downloaded"}
WAIT = 60


@pytest.fixture
def rig(sms_rig: SmsRig | None) -> SmsRig:
    if sms_rig is None:
        pytest.skip("the SMS connector is not installed")
    return sms_rig


@pytest_asyncio.fixture(loop_scope="session")
async def smsgate_emu(rig: SmsRig) -> AsyncIterator[SmsGateEmulator]:
    """This test's own SMSGate server; it must have seen nothing against its spec."""
    emu = await rig.smsgate()
    yield emu
    assert emu.violations == [], "the bridge or the emulator broke the SMSGate spec"


@pytest.fixture
def twilio_emu(rig: SmsRig) -> Any:
    """The session's Twilio emulator; nothing against its spec may happen during the test."""
    before = len(rig.twilio.violations)
    yield rig.twilio
    assert rig.twilio.violations[before:] == [], "the bridge or the emulator broke the Twilio spec"


def direct(invite: dict[str, Any]) -> bool:
    """A one-to-one portal's invite: it has no room name (each login's space is named)."""
    return not any(s.get("type") == "m.room.name" for s in invite["state"])


def body_is(text: str) -> Callable[[dict[str, Any]], bool]:
    return lambda e: e.get("content", {}).get("body") == text


def body_has(text: str) -> Callable[[dict[str, Any]], bool]:
    return lambda e: text in str(e.get("content", {}).get("body", ""))


def send_status(event_id: str, status: str = "SUCCESS") -> Callable[[dict[str, Any]], bool]:
    """The bridge's message status for ``event_id``: SUCCESS once the send is stored."""
    return lambda e: (e.get("type") == "com.beeper.message_send_status"
                      and e.get("content", {}).get("relates_to", {}).get("event_id") == event_id
                      and e.get("content", {}).get("status") == status)


def bodies(user: NioUser, room: str) -> list[Any]:
    return [e.get("content", {}).get("body") for e in user.events(room)]


async def wait_until(check: Callable[[], bool], what: str, timeout: float = WAIT) -> None:
    deadline = time.monotonic() + timeout
    while not check():
        assert time.monotonic() < deadline, f"timed out waiting until {what}"
        await asyncio.sleep(0.1)


async def provision_login(bridge: BridgeProcess, user: str, flow: str, values: dict[str, str]) -> str:
    status, step = await bridge.provision("POST", f"/login/start/sms.{flow}", user)
    assert status == 200, step
    status, done = await bridge.provision(
        "POST", f"/login/step/{step['login_id']}/{step['step_id']}/user_input", user, json=values)
    assert status == 200 and done["type"] == "complete", done
    return str(done["complete"]["user_login_id"])


async def login_smsgate(bridge: BridgeProcess, user: str, emu: SmsGateEmulator) -> str:
    """Log ``user`` in with the phone behind ``emu``; returns once its webhooks are registered."""
    login_id = await provision_login(bridge, user, "smsgate", {
        "phone_number": "06 11 11 11 11", "country": "FR", "base_url": emu.base_url, "username": emu.username,
        "password": emu.password, "signing_key": emu.signing_key})
    await wait_until(lambda: {h["event"] for h in emu.webhooks.values()} >= SMSGATE_HOOKS,
                     "the SMSGate login registered its webhooks")
    return login_id


async def login_twilio(bridge: BridgeProcess, user: str, emu: TwilioEmulator, number: str) -> str:
    """Log ``user`` in with the Twilio ``number``; returns once the number points at the bridge."""
    login_id = await provision_login(bridge, user, "twilio", {
        "phone_number": number, "country": "", "account_sid": emu.account_sid, "auth_token": emu.auth_token})
    await wait_until(lambda: bool(emu.numbers[number]["sms_url"]), "the Twilio number's SmsUrl was set")
    return login_id


async def test_smsgate_round_trip_with_delivery_states(any_bridge: BridgeProcess, nio_users: Any,
                                                      smsgate_emu: SmsGateEmulator) -> None:
    bridge, smsgate = any_bridge, smsgate_emu
    alice = await nio_users("smsalice")
    await login_smsgate(bridge, alice.user_id, smsgate)
    _, calls = await smsgate.inject_sms("+33633333301", "Coucou depuis mon téléphone 📱")
    assert [c.status for c in calls] == [200]
    room = await alice.wait_for_invite(direct, timeout=WAIT)
    evt = await alice.wait_for_message(room, body_is("Coucou depuis mon téléphone 📱"), timeout=WAIT)
    raw = await alice.get_raw_event(room, evt["event_id"])
    assert raw["type"] == "m.room.encrypted"
    privacy = evt["content"]["org.caliopen.privacy"]
    assert privacy["transport"] == "carrier_plaintext" and privacy["backend"] == "smsgate"
    assert privacy["third_party"] is False

    text = "Réponse depuis Matrix, assez longue pour tenir sur plusieurs SMS ✓ " * 4
    event_id = await alice.send_text(room, text)
    sent = await smsgate.wait_sent(lambda m: m.text == text, timeout=WAIT)
    assert sent.phone_numbers == ["+33633333301"]
    # The gateway's statuses come after the bridge has its answer (and has stored the message).
    await alice.wait_for_message(room, send_status(event_id), timeout=WAIT)
    # Statuses arrive out of order and twice; then a later message fails and says why.
    for event in ("sms:delivered", "sms:sent", "sms:delivered"):
        assert [c.status for c in await smsgate.report(sent.id, event)] == [200]
    event_id = await alice.send_text(room, "this one fails")
    failing = await smsgate.wait_sent(lambda m: m.text == "this one fails", timeout=WAIT)
    await alice.wait_for_message(room, send_status(event_id), timeout=WAIT)
    await smsgate.report(failing.id, "sms:failed", reason="RESULT_ERROR_NO_SERVICE")
    await alice.wait_for_message(room, body_has("was not delivered"), timeout=WAIT)
    await alice.wait_for_message(room, send_status(event_id, "FAIL_PERMANENT"), timeout=WAIT)

    # The same webhook again (a retry by the app) is not bridged twice: a later message arrives
    # after where a duplicate would be, and there is none.
    await smsgate.inject_sms("+33633333301", "only once", message_id="dup-1")
    await smsgate.inject_sms("+33633333301", "only once", message_id="dup-1")
    await smsgate.inject_sms("+33633333301", "after the duplicate")
    await alice.wait_for_message(room, body_is("after the duplicate"), timeout=WAIT)
    assert bodies(alice, room).count("only once") == 1
    assert bodies(alice, room).count("Coucou depuis mon téléphone 📱") == 1

    # Forged: refused, nothing bridged.
    hook = smsgate.hook_url()
    body = json.dumps({"event": "sms:received", "payload": {"messageId": "forged", "message": "forged!",
                                                            "phoneNumber": "+33633333301"}}).encode()
    stamp = str(int(time.time()))
    forged = await smsgate.post_raw(hook, body, {"X-Signature": sign("guess", body, stamp), "X-Timestamp": stamp})
    assert forged.status == 403
    assert "forged!" not in bodies(alice, room)


async def test_twilio_mms_both_ways(any_bridge: BridgeProcess, nio_users: Any, rig: SmsRig,
                                    twilio_emu: TwilioEmulator) -> None:
    bridge, twilio = any_bridge, twilio_emu
    alice = await nio_users("smsalice")
    number = rig.twilio_number()
    await login_twilio(bridge, alice.user_id, twilio, number)
    _, call = await twilio.inject_sms("+33633333302", "Une photo", to=number, media=[(PNG, "image/png")])
    assert call.status == 200
    room = await alice.wait_for_invite(direct, timeout=WAIT)
    await alice.wait_for_message(room, body_is("Une photo"), timeout=WAIT)
    image = await alice.wait_for_message(room, lambda e: e.get("content", {}).get("msgtype") == "m.image",
                                         timeout=WAIT)
    assert await alice.download_decrypted(image["content"]) == PNG
    assert image["content"]["org.caliopen.privacy"]["third_party"] is True

    reply = b"\x89PNG\r\n\x1a\n" + secrets.token_bytes(500)
    fetched_before = len(twilio.fetched_media)
    event_id = await alice.send_file(room, reply, "reply.png", "image/png")
    msg = await twilio.wait_sent(lambda m: m.from_ == number and m.to == "+33633333302" and bool(m.media),
                                 timeout=WAIT)
    assert msg.media[0][2] == reply and msg.body == ""
    assert [(s, d) for _, s, _, d in twilio.fetched_media[fetched_before:]] == [(200, reply)]
    await alice.wait_for_message(room, send_status(event_id), timeout=WAIT)
    await twilio.status(msg.sid, "undelivered", error_code=30005)
    await alice.wait_for_message(room, body_has("does not exist"), timeout=WAIT)


async def test_start_chat_and_bad_numbers(bridge: BridgeProcess, nio_users: Any,
                                          smsgate_emu: SmsGateEmulator) -> None:
    smsgate = smsgate_emu
    alice = await nio_users("smsalice")
    login_id = await login_smsgate(bridge, alice.user_id, smsgate)
    status, body = await bridge.provision("POST", f"/create_dm/{'06 33 33 33 03'}?login_id={login_id}",
                                          alice.user_id)
    assert status == 200, body
    room = await alice.wait_for_invite(direct, timeout=WAIT)
    await alice.send_text(room, "first message from Matrix")
    sent = await smsgate.wait_sent(lambda m: m.text == "first message from Matrix", timeout=WAIT)
    assert sent.phone_numbers == ["+33633333303"]
    status, body = await bridge.provision("POST", f"/create_dm/{'not-a-number'}?login_id={login_id}",
                                          alice.user_id)
    assert status == 400 and "not a phone number" in body["error"]


async def test_gateway_down_then_clear_error(bridge: BridgeProcess, nio_users: Any,
                                             smsgate_emu: SmsGateEmulator) -> None:
    smsgate = smsgate_emu
    alice = await nio_users("smsalice")
    await login_smsgate(bridge, alice.user_id, smsgate)
    await smsgate.inject_sms("+33633333304", "before the outage")
    room = await alice.wait_for_invite(direct, timeout=WAIT)
    await alice.wait_for_message(room, body_is("before the outage"), timeout=WAIT)
    smsgate.fail_next_sends(1000)
    try:
        await alice.send_text(room, "lost in the outage")
        await alice.wait_for_message(room, body_has("Your message was not sent"), timeout=WAIT)
    finally:
        smsgate.fail_next_sends(0)
    assert not any(m.text == "lost in the outage" for m in smsgate.sent)


async def modem_user(synapse: Synapse, localpart: str, store: Path) -> NioUser:
    """The bridge's modem user (a fixed localpart from its config), registered on first use."""
    try:
        return await NioUser.create(synapse, localpart, store)
    except SynapseError:  # already registered earlier in this session
        return await NioUser.create(synapse, localpart, store, register=False)


@pytest.mark.skipif(not rig_gammu.available(), reason="gammu-smsd is not installed")
async def test_gammu_round_trip(any_bridge: BridgeProcess, synapse: Synapse, rig: SmsRig, tmp_path: Path) -> None:
    bridge = any_bridge
    modem = bridge.config["networks"]["sms"]["gammu"]["modems"]["usb0"]
    tag = next(t for t, smsd in rig.modems.items() if str(smsd.inbox) == modem["inbox"])
    user = await modem_user(synapse, rig.modem_user(tag), tmp_path / "nio")
    assert modem["users"] == [user.user_id]
    try:
        async with rig.modem_running(tag) as smsd:
            await provision_login(bridge, user.user_id, "gammu",
                                  {"phone_number": "06 22 22 22 22", "country": "FR", "modem": "usb0"})
            smsd.inject_sms("+33633333305", "Depuis le modem GSM ✓")
            room = await user.wait_for_invite(direct, timeout=WAIT)
            evt = await user.wait_for_message(room, body_is("Depuis le modem GSM ✓"), timeout=WAIT)
            assert evt["content"]["org.caliopen.privacy"]["backend"] == "gammu"
            await user.send_text(room, "Réponse par le modem")
            sent = await smsd.wait_sent("Réponse par le modem", timeout=WAIT)
            assert sent.number == "+33633333305"
    finally:
        await user.close()


async def test_sigkill_after_the_ack_loses_nothing(bridge: BridgeProcess, nio_users: Any,
                                                   smsgate_emu: SmsGateEmulator) -> None:
    smsgate = smsgate_emu
    alice = await nio_users("smsalice")
    await login_smsgate(bridge, alice.user_id, smsgate)
    await smsgate.inject_sms("+33633333306", "opening the room")
    room = await alice.wait_for_invite(direct, timeout=WAIT)
    await alice.wait_for_message(room, body_is("opening the room"), timeout=WAIT)
    try:
        # Acknowledged means stored: kill the bridge the moment the webhook is answered.
        _, calls = await smsgate.inject_sms("+33633333306", "acknowledged just before the crash")
        await bridge.kill()
        assert [c.status for c in calls] == [200]
        # While the bridge is down the app cannot deliver; it retries the same message afterwards.
        _, down = await smsgate.inject_sms("+33633333306", "sent while the bridge was down", message_id="while-down")
        assert [c.status for c in down] == [0]
        await bridge.start()
    finally:
        if bridge.proc is None or bridge.proc.returncode is not None:
            await bridge.start()  # the session's bridge stays up for the other tests
    _, retried = await smsgate.inject_sms("+33633333306", "sent while the bridge was down", message_id="while-down")
    assert [c.status for c in retried] == [200]
    await alice.wait_for_message(room, body_is("acknowledged just before the crash"), timeout=WAIT)
    await alice.wait_for_message(room, body_is("sent while the bridge was down"), timeout=WAIT)
    # The same webhook once more, then a later message: it comes after where a duplicate would be.
    await smsgate.inject_sms("+33633333306", "sent while the bridge was down", message_id="while-down")
    await smsgate.inject_sms("+33633333306", "after the restart")
    await alice.wait_for_message(room, body_is("after the restart"), timeout=WAIT)
    assert bodies(alice, room).count("acknowledged just before the crash") == 1
    assert bodies(alice, room).count("sent while the bridge was down") == 1


async def test_login_and_start_chat_by_chat_commands(bridge: BridgeProcess, nio_users: Any, rig: SmsRig,
                                                     twilio_emu: TwilioEmulator) -> None:
    twilio = twilio_emu
    alice = await nio_users("smsalice")
    number = rig.twilio_number()
    mgmt = await alice.create_dm(bridge.bot_mxid)
    await alice.wait_for_message(mgmt, body_has("management room"), timeout=WAIT)
    await alice.send_text(mgmt, "login sms twilio")
    answers = [("Send your phone number", number), ("Send your country", "-"),
               ("Send your Twilio Account SID", twilio.account_sid), ("Send your Twilio Auth Token", twilio.auth_token)]
    secret_event = ""
    for prompt, value in answers:
        await alice.wait_for_message(mgmt, body_has(prompt), timeout=WAIT)
        secret_event = await alice.send_text(mgmt, value)
    done = await alice.wait_for_message(mgmt, body_has("Logged in to sms"), timeout=WAIT)
    raw = await alice.get_raw_event(mgmt, secret_event)  # the Auth Token's message is redacted
    assert raw.get("unsigned", {}).get("redacted_because") or not raw.get("content"), raw
    assert twilio.auth_token not in bridge.log_text()
    login_id = re.search(r"\(login (sms-[0-9a-f]+)\)", done["content"]["body"]).group(1)  # type: ignore[union-attr]
    await wait_until(lambda: bool(twilio.numbers[number]["sms_url"]), "the Twilio number's SmsUrl was set")
    # The number is the rest of the line, spaces and all.
    await alice.send_text(mgmt, f"start-chat sms --login {login_id} +33 6 33 33 33 07")
    await alice.wait_for_message(mgmt, body_has("you are invited"), timeout=WAIT)
    room = await alice.wait_for_invite(direct, timeout=WAIT)
    await alice.send_text(room, "started from the bot")
    msg = await twilio.wait_sent(lambda m: m.body == "started from the bot", timeout=WAIT)
    assert (msg.from_, msg.to) == (number, "+33633333307")
