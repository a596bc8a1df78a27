"""The SMSGate and Twilio backends against their emulators (specs checked on every request).

A small aiohttp server stands in for the bridge's webhook server: it hands each request to the
backend's ``parse_webhook`` and serves the files the Twilio backend publishes.
"""

from __future__ import annotations

import secrets
from collections.abc import AsyncIterator
from dataclasses import dataclass, field

import aiohttp
import pytest
from aiohttp import web

from bridges.core.errors import ConversionError, LoginError, SendError
from bridges.sandbox.synapse import free_port
from bridges.sms.backends.base import (
    BackendEvent,
    Media,
    MediaRef,
    MessageReceived,
    MessageState,
    RetryPolicy,
    StatusUpdate,
    WebhookForbidden,
    WebhookMalformed,
    WebhookRequest,
)
from bridges.sms.backends.smsgate import SmsGateBackend
from bridges.sms.backends.twilio import TwilioBackend
from tests.emulators.smsgate import SmsGateEmulator
from tests.emulators.twilio import TwilioEmulator

FAST = RetryPolicy(attempts=3, first_delay=0.01, timeout=10)
PNG = b"\x89PNG\r\n\x1a\n" + secrets.token_bytes(64)


@dataclass
class Receiver:
    """Webhook receiver: ``public`` is the URL the gateway is told; requests land on ``port``."""

    port: int
    public: str
    backend: object | None = None
    events: list[BackendEvent] = field(default_factory=list)
    answers: list[int] = field(default_factory=list)
    files: dict[str, Media] = field(default_factory=dict)

    def publish(self, media: Media) -> str:
        token = secrets.token_urlsafe(24)
        self.files[token] = media
        return f"{self.public}/media/{token}"

    async def handle(self, request: web.Request) -> web.Response:
        kind = request.match_info["kind"]
        if kind == "media":
            media = self.files.get(request.match_info["rest"])
            if media is None:
                return web.Response(status=404)
            return web.Response(body=media.data, content_type=media.mimetype)
        body = await request.read()
        url = self.public + request.path_qs.split("/hooks/s3cret", 1)[1]
        req = WebhookRequest(request.method, url, kind, request.headers, body, request.content_type)
        try:
            events = self.backend.parse_webhook(req)  # type: ignore[union-attr]
        except WebhookForbidden:
            self.answers.append(403)
            return web.Response(status=403)
        except WebhookMalformed:
            self.answers.append(400)
            return web.Response(status=400)
        self.events.extend(events)
        self.answers.append(200)
        return web.Response(status=200)


@pytest.fixture
async def http() -> AsyncIterator[aiohttp.ClientSession]:
    async with aiohttp.ClientSession() as session:
        yield session


async def make_receiver(public_base: str | None = None) -> tuple[Receiver, web.AppRunner]:
    port = free_port()
    receiver = Receiver(port, (public_base or f"http://127.0.0.1:{port}") + "/hooks/s3cret")
    app = web.Application()
    app.router.add_route("*", "/hooks/s3cret/{kind}", receiver.handle)
    app.router.add_route("*", "/hooks/s3cret/{kind}/{rest}", receiver.handle)
    runner = web.AppRunner(app, access_log=None)
    await runner.setup()
    await web.TCPSite(runner, "127.0.0.1", port).start()
    return receiver, runner


@pytest.fixture
async def smsgate_env(http: aiohttp.ClientSession) -> AsyncIterator[tuple[SmsGateEmulator, SmsGateBackend, Receiver]]:
    emu = SmsGateEmulator()
    await emu.start()
    receiver, runner = await make_receiver()
    backend = SmsGateBackend(http, base_url=emu.base_url, username=emu.username, password=emu.password,
                             signing_key=emu.signing_key, webhook_url=f"{receiver.public}/smsgate", policy=FAST)
    receiver.backend = backend
    yield emu, backend, receiver
    await runner.cleanup()
    await emu.stop()
    assert emu.violations == []


@pytest.fixture
async def twilio_env(http: aiohttp.ClientSession) -> AsyncIterator[tuple[TwilioEmulator, TwilioBackend, Receiver]]:
    public = "https://sms.example.org"
    receiver, runner = await make_receiver(public)
    emu = TwilioEmulator(route=lambda url: url.replace(public, f"http://127.0.0.1:{receiver.port}"))
    await emu.start()
    number = next(iter(emu.numbers))
    backend = TwilioBackend(http, account_sid=emu.account_sid, auth_token=emu.auth_token, phone_number=number,
                            webhook_base=receiver.public, api_url=emu.base_url, media_host=receiver, policy=FAST)
    receiver.backend = backend
    yield emu, backend, receiver
    await runner.cleanup()
    await emu.stop()
    assert emu.violations == []


async def noop(event: BackendEvent) -> None:
    return None


# --- SMSGate ------------------------------------------------------------------------------------


async def test_smsgate_check(smsgate_env, http: aiohttp.ClientSession) -> None:
    emu, backend, _ = smsgate_env
    await backend.check()
    wrong = SmsGateBackend(http, base_url=emu.base_url, username=emu.username, password="nope",
                           signing_key="k", webhook_url="http://x/y", policy=FAST)
    with pytest.raises(LoginError, match="username or password"):
        await wrong.check()
    down = SmsGateBackend(http, base_url=f"http://127.0.0.1:{free_port()}/api", username="u", password="p",
                          signing_key="k", webhook_url="http://x/y", policy=FAST)
    with pytest.raises(LoginError, match="Could not reach SMSGate"):
        await down.check()


async def test_smsgate_send_unicode_and_long(smsgate_env) -> None:
    emu, backend, _ = smsgate_env
    text = "Bonjour 👋 ça va ? " * 40  # long and not GSM-7: the phone splits it, nothing is cut
    message_id = await backend.send(["+33612345678"], text, [])
    [sent] = emu.sent
    assert sent.id == message_id and sent.text == text and sent.phone_numbers == ["+33612345678"]
    assert sent.request["withDeliveryReport"] is True


async def test_smsgate_retries_then_gives_a_clear_error(smsgate_env) -> None:
    emu, backend, _ = smsgate_env
    emu.fail_next_sends(2)
    message_id = await backend.send(["+33612345678"], "third time lucky", [])
    assert [m.id for m in emu.sent] == [message_id]
    emu.fail_next_sends(10)
    with pytest.raises(SendError) as err:
        await backend.send(["+33612345678"], "never", [])
    assert err.value.retryable and "HTTP 503" in err.value.user_message
    assert len(emu.sent) == 1


async def test_smsgate_refusals(smsgate_env) -> None:
    emu, backend, _ = smsgate_env
    with pytest.raises(SendError) as err:
        await backend.send(["12"], "hi", [])
    assert not err.value.retryable and "invalid phone number" in err.value.user_message
    with pytest.raises(SendError, match="text only"):
        await backend.send(["+33612345678"], "pic", [Media(PNG, "image/png", "a.png")])
    assert emu.sent == []


async def test_smsgate_webhooks_registered_and_received(smsgate_env) -> None:
    emu, backend, receiver = smsgate_env
    await backend.start_receiving(noop)
    events = {h["event"] for h in emu.webhooks.values()}
    assert events == {"sms:received", "sms:sent", "sms:delivered", "sms:failed", "mms:downloaded"}
    await backend.start_receiving(noop)  # registering again replaces, never adds
    assert len(emu.webhooks) == 5

    message_id, calls = await emu.inject_sms("+33612345678", "héllo 🌍")
    assert [c.status for c in calls] == [200]
    sent_id = await backend.send(["+33612345678"], "reply", [])
    await emu.report(sent_id, "sms:sent")
    await emu.report(sent_id, "sms:failed", reason="RESULT_ERROR_NO_SERVICE")
    got = receiver.events
    assert isinstance(got[0], MessageReceived) and (got[0].id, got[0].text) == (message_id, "héllo 🌍")
    assert [(e.id, e.state) for e in got[1:] if isinstance(e, StatusUpdate)] == [
        (sent_id, MessageState.SENT), (sent_id, MessageState.FAILED)]
    assert "RESULT_ERROR_NO_SERVICE" in (got[2].error or "")

    bad = await emu.deliver("sms:received", {"messageId": "m9", "message": "x", "phoneNumber": "+3361"}, key="forged")
    assert [c.status for c in bad] == [403]
    await backend.unregister()
    assert emu.webhooks == {}


async def test_smsgate_without_mms_support(smsgate_env) -> None:
    emu, backend, _ = smsgate_env
    emu.refuse_events.add("mms:downloaded")
    await backend.start_receiving(noop)
    assert {h["event"] for h in emu.webhooks.values()} == {"sms:received", "sms:sent", "sms:delivered", "sms:failed"}


async def test_smsgate_mms_media(smsgate_env) -> None:
    emu, backend, receiver = smsgate_env
    await backend.start_receiving(noop)
    await emu.inject_mms("+33612345678", "photos", [(PNG, "image/png", "inline.png", True),
                                                     (b"GIF89a" + PNG, "image/gif", None, False)])
    [msg] = receiver.events
    assert isinstance(msg, MessageReceived) and len(msg.media) == 2
    first, second = [await backend.fetch_media(ref) for ref in msg.media]
    assert (first.data, first.filename) == (PNG, "inline.png")
    assert (second.data, second.mimetype, second.filename) == (b"GIF89a" + PNG, "image/gif", "attachment.gif")
    with pytest.raises(ConversionError):
        await backend.fetch_media(MediaRef(f"{emu.base_url}/inbox/nope/attachments/1", "image/png"))
    with pytest.raises(ConversionError):
        await backend.fetch_media(MediaRef("http://127.0.0.1:1/elsewhere", "image/png"))


# --- Twilio -------------------------------------------------------------------------------------


async def test_twilio_check(twilio_env, http: aiohttp.ClientSession) -> None:
    emu, backend, _ = twilio_env
    await backend.check()
    assert backend.number_sid == emu.numbers[backend.phone_number]["sid"]

    def variant(**kw: str) -> TwilioBackend:
        args = {"account_sid": emu.account_sid, "auth_token": emu.auth_token, "phone_number": backend.phone_number}
        args.update(kw)
        return TwilioBackend(http, webhook_base="http://x", api_url=emu.base_url, policy=FAST, **args)

    with pytest.raises(LoginError, match="refused the Account SID or Auth Token"):
        await variant(auth_token="wrong").check()
    with pytest.raises(LoginError, match="not a number of this Twilio account"):
        await variant(phone_number="+15005550001").check()
    with pytest.raises(LoginError, match="AC followed by 32"):
        await variant(account_sid="AC123").check()


async def test_twilio_points_the_number_at_the_bridge(twilio_env) -> None:
    emu, backend, _ = twilio_env
    await backend.start_receiving(noop)
    assert emu.numbers[backend.phone_number]["sms_url"] == "https://sms.example.org/hooks/s3cret/twilio-inbound"


async def test_twilio_send_text_and_media(twilio_env) -> None:
    emu, backend, receiver = twilio_env
    # The media URL is public (behind the proxy); the emulator reaches it through its route.
    receiver.public = "https://sms.example.org/hooks/s3cret"
    sid = await backend.send(["+33612345678"], "voilà ✓", [Media(PNG, "image/png", "p.png")])
    [msg] = emu.sent
    assert msg.sid == sid and sid.startswith("MM") and msg.body == "voilà ✓" and msg.to == "+33612345678"
    assert msg.status_callback == "https://sms.example.org/hooks/s3cret/twilio-status"
    assert [(status, ctype, data) for _, status, ctype, data in emu.fetched_media] == [(200, "image/png", PNG)]
    await emu.status(sid, "sent")
    await emu.status(sid, "undelivered", error_code=30005)
    assert [(e.id, e.state) for e in receiver.events] == [(sid, MessageState.SENT), (sid, MessageState.FAILED)]
    assert "does not exist" in (receiver.events[1].error or "")


async def test_twilio_send_failures(twilio_env) -> None:
    emu, backend, _ = twilio_env
    emu.fail_next_sends(2)
    sid = await backend.send(["+33612345678"], "after two 503s", [])
    assert [m.sid for m in emu.sent] == [sid]
    emu.fail_next_sends(5, status=500)
    with pytest.raises(SendError) as err:
        await backend.send(["+33612345678"], "down", [])
    assert err.value.retryable
    with pytest.raises(SendError) as err:
        await backend.send(["+3361"], "bad number", [])
    assert not err.value.retryable and "Invalid 'To' Phone Number" in err.value.user_message
    with pytest.raises(SendError, match="at most 1600"):
        await backend.send(["+33612345678"], "x" * 1601, [])
    with pytest.raises(SendError, match="one number at a time"):
        await backend.send(["+33612345678", "+33700000000"], "group", [])
    assert len(emu.sent) == 1


async def test_twilio_inbound_mms_fetched_with_auth(twilio_env) -> None:
    emu, backend, receiver = twilio_env
    await backend.start_receiving(noop)
    sid, call = await emu.inject_sms("+33612345678", "regarde", media=[(PNG, "image/png")])
    assert call.status == 200
    [msg] = receiver.events
    assert isinstance(msg, MessageReceived) and msg.id == sid and msg.text == "regarde"
    media = await backend.fetch_media(msg.media[0])
    assert (media.data, media.mimetype) == (PNG, "image/png")
    # Signed for the internal address instead of the public one: refused.
    forged = await emu.post_raw(emu.numbers[backend.phone_number]["sms_url"], call.params,
                                signature=emu.sign("http://127.0.0.1/hooks/s3cret/twilio-inbound", call.params))
    assert forged.status == 403 and len(receiver.events) == 1
