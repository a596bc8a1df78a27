"""The SMS connector with SMSGate: login, webhooks (ack after storing, forged, retried,
malformed), conversion, sending and delivery states, against the spec-checked emulator."""

from __future__ import annotations

import asyncio
import json
import logging

import pytest

from bridges.core.errors import LoginError, SendError, UserInputError
from bridges.core.events import DeliveryState, MatrixMessage, Media, PortalRef, RemoteEventKind
from bridges.core.network import LoginState, SupportsStartChat
from tests.emulators.smsgate import SmsGateEmulator, sign
from tests.sms.bridge_double import BridgeDouble
from tests.sms.conftest import smsgate_values

SECRET_TEXT = "Le code secret est 4711 ✓"


def matrix_message(client, portal_id: str, body: str, **kw) -> MatrixMessage:  # type: ignore[no-untyped-def]
    return MatrixMessage(event_id=f"$ev{abs(hash(body))}", portal=PortalRef(portal_id, client.login.id, None, {}),
                         sender_mxid=client.login.user_mxid, msgtype=kw.pop("msgtype", "m.text"), body=body, **kw)


async def test_login_flow_checks_settings(make_connector, smsgate: SmsGateEmulator) -> None:
    connector = await make_connector(default_country="FR")
    assert [f.id for f in connector.get_login_flows()] == ["smsgate", "twilio"]  # no modem configured
    process = connector.create_login("@alice:example.org", "smsgate")
    step = await process.start()
    fields = {f.id: f for f in step.fields}
    assert fields["password"].is_secret and fields["signing_key"].is_secret and fields["country"].default == "FR"
    with pytest.raises(LoginError, match="username or password"):
        await process.submit_input(smsgate_values(smsgate, password="wrong"))
    with pytest.raises(UserInputError, match="not a possible phone number"):
        await process.submit_input(smsgate_values(smsgate, phone_number="12"))
    done = await process.submit_input(smsgate_values(smsgate))
    result = done.result
    assert result is not None and result.remote_id == "smsgate:+33699999999"
    assert result.metadata["phone_number"] == "+33699999999" and result.metadata["country"] == "FR"
    assert "password" not in result.metadata and result.secrets["password"] == smsgate.password
    assert len(result.secrets["webhook_secret"]) >= 24


async def test_inbound_sms_is_queued_then_acknowledged(make_connector, login, fake_core: BridgeDouble,
                                                       smsgate: SmsGateEmulator, caplog) -> None:
    caplog.set_level(logging.DEBUG)
    connector = await make_connector()
    client = await login(connector, "smsgate", smsgate_values(smsgate))
    hook = smsgate.hook_url()
    assert hook.startswith(f"{fake_core.public_url}/_caliopen/sms/{client.secret}/")

    # The webhook is answered only once the event is stored.
    fake_core.gate = asyncio.Event()
    task = asyncio.create_task(smsgate.inject_sms("+33612345678", SECRET_TEXT))
    await fake_core.wait_for(lambda: fake_core.waiting == 1, what="the webhook to reach the store")
    await asyncio.sleep(0.1)
    assert not task.done() and fake_core.queued == []  # no answer while the store has not returned
    fake_core.gate.set()
    fake_core.gate = None
    message_id, calls = await task
    assert [c.status for c in calls] == [200]
    [event] = fake_core.queued
    assert (event.kind, event.remote_id, event.portal_id) == (RemoteEventKind.MESSAGE, message_id, "+33612345678")
    assert event.sender.remote_id == "+33612345678" and event.sender.name == "+33 6 12 34 56 78"
    assert event.chat_info is not None and event.chat_info.is_direct

    converted = await client.convert_remote(PortalRef("+33612345678", client.login.id, None, {}), event)
    assert [p.content for p in converted.parts] == [{"msgtype": "m.text", "body": SECRET_TEXT}]
    assert converted.privacy is not None and converted.privacy["transport"] == "carrier_plaintext"
    assert converted.privacy["backend"] == "smsgate" and converted.privacy["third_party"] is False
    assert SECRET_TEXT not in caplog.text


async def test_store_failure_means_no_ack_and_the_retry_bridges_once(make_connector, login, fake_core: BridgeDouble,
                                                                     smsgate: SmsGateEmulator) -> None:
    connector = await make_connector()
    await login(connector, "smsgate", smsgate_values(smsgate))
    fake_core.fail_next_queue = 1
    message_id, calls = await smsgate.inject_sms("+33612345678", "first try fails")
    assert [c.status for c in calls] == [500] and fake_core.queued == []
    # The app retries the same message; then it retries once more (a lost 200).
    _, again = await smsgate.inject_sms("+33612345678", "first try fails", message_id=message_id)
    _, third = await smsgate.inject_sms("+33612345678", "first try fails", message_id=message_id)
    assert [c.status for c in again + third] == [200, 200]
    assert [e.remote_id for e in fake_core.queued] == [message_id]


async def test_forged_unsigned_stale_and_malformed(make_connector, login, fake_core: BridgeDouble,
                                                   smsgate: SmsGateEmulator, caplog) -> None:
    caplog.set_level(logging.INFO)
    connector = await make_connector()
    await login(connector, "smsgate", smsgate_values(smsgate))
    forged = await smsgate.deliver("sms:received", {"messageId": "f1", "message": SECRET_TEXT,
                                                    "phoneNumber": "+33612345678"}, key="not-the-key")
    stale = await smsgate.deliver("sms:received", {"messageId": "f2", "message": SECRET_TEXT,
                                                   "phoneNumber": "+33612345678"}, timestamp=1_600_000_000)
    hook = smsgate.hook_url()
    body = json.dumps({"event": "sms:received", "payload": {"messageId": "f3", "message": SECRET_TEXT}}).encode()
    unsigned = await smsgate.post_raw(hook, body, {"Content-Type": "application/json"})
    stamp = str(int(__import__("time").time()))
    garbage = b'{"event": "sms:received", "payload": ' + SECRET_TEXT.encode() + b"}"
    malformed = await smsgate.post_raw(hook, garbage, {"X-Signature": sign(smsgate.signing_key, garbage, stamp),
                                                       "X-Timestamp": stamp})
    wrong_path = await smsgate.post_raw(hook.replace("/_caliopen/sms/", "/_caliopen/sms/x"), body, {})
    assert [d.status for d in forged + stale] == [403, 403]
    assert (unsigned.status, malformed.status, wrong_path.status) == (403, 400, 404)
    assert fake_core.queued == []
    assert "refused (403)" in caplog.text and "unreadable (400)" in caplog.text
    assert "4711" not in caplog.text


async def test_send_and_delivery_states(make_connector, login, fake_core: BridgeDouble,
                                        smsgate: SmsGateEmulator) -> None:
    connector = await make_connector()
    client = await login(connector, "smsgate", smsgate_values(smsgate))
    text = "Réponse longue et accentuée ✓ " * 20
    sent = await client.handle_matrix_message(matrix_message(client, "+33612345678", text))
    assert sent.state == DeliveryState.QUEUED
    [out] = smsgate.sent
    assert (out.id, out.text, out.phone_numbers) == (sent.remote_id, text, ["+33612345678"])

    # Delivered arrives before sent, and both twice: every distinct state is queued once.
    await smsgate.report(sent.remote_id, "sms:delivered")
    await smsgate.report(sent.remote_id, "sms:sent")
    await smsgate.report(sent.remote_id, "sms:delivered")
    await smsgate.report(sent.remote_id, "sms:sent")
    deliveries = fake_core.events(RemoteEventKind.DELIVERY)
    assert [(e.target_id, e.data["state"], e.portal_id) for e in deliveries] == [
        (sent.remote_id, "delivered", "+33612345678"), (sent.remote_id, "sent", "+33612345678")]
    await smsgate.report(sent.remote_id, "sms:failed", reason="RESULT_ERROR_NO_SERVICE")
    failed = fake_core.events(RemoteEventKind.DELIVERY)[-1]
    assert failed.data["state"] == "failed" and "NO_SERVICE" in failed.data["error"]

    # A message sent by the phone's own app has no Matrix message: its status still goes to the
    # core (it cannot tell it from a status that overtook its send), which drops it later.
    await smsgate.report("sent-by-the-app", "sms:delivered", phone_number="+33612345678")
    assert len(fake_core.events(RemoteEventKind.DELIVERY)) == 4
    assert fake_core.events(RemoteEventKind.DELIVERY)[-1].target_id == "sent-by-the-app"
    # After a restart the client no longer remembers its sends; the core's mapping counts.
    client.sent_portals.clear()
    fake_core.stored_messages.add((client.login.id, sent.remote_id))
    fake_core.keys.discard((client.login.id, "delivery", f"{sent.remote_id}:delivered"))
    await smsgate.report(sent.remote_id, "sms:delivered")
    assert len(fake_core.events(RemoteEventKind.DELIVERY)) == 5
    assert fake_core.events(RemoteEventKind.DELIVERY)[-1].target_id == sent.remote_id


async def test_backend_down_then_clear_error(make_connector, login, smsgate: SmsGateEmulator) -> None:
    connector = await make_connector()
    client = await login(connector, "smsgate", smsgate_values(smsgate))
    smsgate.fail_next_sends(2)
    sent = await client.handle_matrix_message(matrix_message(client, "+33612345678", "retried"))
    assert [m.id for m in smsgate.sent] == [sent.remote_id]
    smsgate.fail_next_sends(100)
    with pytest.raises(SendError) as err:
        await client.handle_matrix_message(matrix_message(client, "+33612345678", "down"))
    assert err.value.retryable and "did not answer" in err.value.user_message
    with pytest.raises(SendError, match="text only"):
        await client.handle_matrix_message(matrix_message(
            client, "+33612345678", "p.png", msgtype="m.image", media=Media(b"png", "image/png", "p.png")))
    with pytest.raises(SendError, match="cannot receive SMS"):
        await client.handle_matrix_message(matrix_message(client, "amazon", "hello?"))


async def test_start_chat(make_connector, login, smsgate: SmsGateEmulator) -> None:
    connector = await make_connector()
    client = await login(connector, "smsgate", smsgate_values(smsgate))
    assert isinstance(client, SupportsStartChat)
    portal, info = await client.resolve_identifier("06 12 34 56 78")
    assert portal == "+33612345678" and info.is_direct and info.members[0].remote_id == "+33612345678"
    portal, _ = await client.resolve_identifier("+44 20 7946 0958")
    assert portal == "+442079460958"
    for bad in ("hello", "12", "+33699999999"):
        with pytest.raises(UserInputError):
            await client.resolve_identifier(bad)


async def test_unreachable_gateway_is_a_transient_state(make_connector, login, fake_core: BridgeDouble,
                                                        smsgate: SmsGateEmulator) -> None:
    connector = await make_connector()
    client = await login(connector, "smsgate", smsgate_values(smsgate))
    await client.disconnect()
    await smsgate.stop()
    await client.connect()
    await fake_core.wait_for(lambda: fake_core.state_of(client.login.id) == LoginState.TRANSIENT_DISCONNECT,
                             what="TRANSIENT_DISCONNECT")
    assert not client.is_logged_in()
    await client.disconnect()
    # A disconnected login does not take webhooks: the gateway keeps them and retries.
    await smsgate.start()
    _, calls = await smsgate.inject_sms("+33612345678", "while off")
    assert [c.status for c in calls] == [503] and fake_core.queued == []
