"""The SMS protocol code alone: phone numbers, webhook signatures and parsing, gammu's files.

No network here; the backends' HTTP side is tested against the emulators (test_backends.py).
"""

from __future__ import annotations

import json
import time
from datetime import datetime, timezone
from pathlib import Path
from urllib.parse import urlencode

import aiohttp
import pytest
from twilio.request_validator import RequestValidator

from bridges.core.errors import UserInputError
from bridges.sms import ids
from bridges.sms.backends.base import (
    MediaRef,
    MessageReceived,
    MessageState,
    StatusUpdate,
    WebhookForbidden,
    WebhookMalformed,
    WebhookRequest,
    data_url,
    decode_data_url,
)
from bridges.sms.backends.gammu import parse_backup, read_inbox_file, section_text, segments_needed
from bridges.sms.backends.smsgate import SmsGateBackend, sign
from bridges.sms.backends.twilio import TwilioBackend

SID = "AC" + "0123456789abcdef" * 2
TOKEN = "twilio-auth-token"
PUBLIC = "https://bridge.example.org/_caliopen/sms/s3cret"


# --- phone numbers ------------------------------------------------------------------------


@pytest.mark.parametrize("typed,region,expected", [
    ("06 12 34 56 78", "FR", "+33612345678"),
    ("+33 6 12 34 56 78", None, "+33612345678"),
    ("(415) 555-2671", "us", "+14155552671"),
    ("0044 20 7946 0958", "FR", "+442079460958"),
])
def test_normalise_to_e164(typed: str, region: str | None, expected: str) -> None:
    assert ids.normalise(typed, region) == expected


@pytest.mark.parametrize("typed,region", [("12", "FR"), ("hello", "FR"), ("0612345678", None), ("", "FR")])
def test_normalise_refuses_what_is_not_a_number(typed: str, region: str | None) -> None:
    with pytest.raises(UserInputError):
        ids.normalise(typed, region)


def test_sender_ids_never_fail() -> None:
    assert ids.sender_id("0612345678", "FR") == "+33612345678"
    assert ids.sender_id("+33612345678", None) == "+33612345678"
    assert ids.sender_id("36665", "FR") == "36665"  # a short code stays a short code
    assert ids.sender_id("AMAZON", "FR") == "amazon"
    assert ids.sender_id("  ", "FR") == "unknown"
    assert ids.is_phone_number("+33612345678") and not ids.is_phone_number("amazon")


def test_portal_ids_are_order_free() -> None:
    assert ids.portal_id(["+33612345678"]) == "+33612345678"
    group = ids.portal_id(["+33700000002", "+33612345678", "+33700000002"])
    assert group == "+33612345678,+33700000002"
    assert ids.portal_members(group) == ["+33612345678", "+33700000002"]
    assert ids.display_name("+33612345678") == "+33 6 12 34 56 78"
    with pytest.raises(UserInputError):
        ids.valid_region("France")


def test_data_urls_round_trip() -> None:
    ref = MediaRef(data_url(b"\x89PNG...", "image/png"), "image/png")
    media = decode_data_url(ref)
    assert media is not None and media.data == b"\x89PNG..." and media.filename == "attachment.png"
    assert decode_data_url(MediaRef("https://x/y", "image/png")) is None


# --- SMSGate webhooks --------------------------------------------------------------------------


@pytest.fixture
async def smsgate() -> SmsGateBackend:
    async with aiohttp.ClientSession() as session:
        yield SmsGateBackend(session, base_url="http://127.0.0.1:9/api", username="u", password="p",
                             signing_key="k3y", webhook_url=PUBLIC + "/smsgate")


def smsgate_request(body: bytes, *, key: str = "k3y", ts: int | None = None, headers: dict | None = None
                    ) -> WebhookRequest:
    stamp = str(int(time.time()) if ts is None else ts)
    hdrs = {"X-Signature": sign(key, body, stamp), "X-Timestamp": stamp} if headers is None else headers
    return WebhookRequest("POST", PUBLIC + "/smsgate", "smsgate", hdrs, body, "application/json")


def envelope(event: str, payload: dict) -> bytes:
    return json.dumps({"id": "evt1", "webhookId": "w", "deviceId": "d", "event": event, "payload": payload},
                      ensure_ascii=True).encode()


async def test_smsgate_received_is_parsed_from_the_raw_signed_body(smsgate: SmsGateBackend) -> None:
    body = envelope("sms:received", {"messageId": "m1", "message": "Ça va ? 👋", "phoneNumber": "+33612345678",
                                     "receivedAt": "2024-06-22T15:46:11.000+07:00"})
    assert b"\\u00c7" in body  # escaped as the app may send it: the signature covers these bytes
    [event] = smsgate.parse_webhook(smsgate_request(body))
    assert isinstance(event, MessageReceived)
    assert (event.id, event.sender, event.text) == ("m1", "+33612345678", "Ça va ? 👋")
    assert event.timestamp == 1719045971000


@pytest.mark.parametrize("event,state", [("sms:sent", MessageState.SENT), ("sms:delivered", MessageState.DELIVERED),
                                         ("sms:failed", MessageState.FAILED)])
async def test_smsgate_status_events(smsgate: SmsGateBackend, event: str, state: MessageState) -> None:
    body = envelope(event, {"messageId": "m2", "phoneNumber": "+33612345678", "reason": "RESULT_ERROR_NO_SERVICE"})
    [update] = smsgate.parse_webhook(smsgate_request(body))
    assert isinstance(update, StatusUpdate) and update.id == "m2" and update.state == state
    assert (update.error is not None) == (state == MessageState.FAILED)


async def test_smsgate_forged_unsigned_stale_are_forbidden(smsgate: SmsGateBackend) -> None:
    body = envelope("sms:received", {"messageId": "m1", "message": "x", "phoneNumber": "+33612345678"})
    with pytest.raises(WebhookForbidden):
        smsgate.parse_webhook(smsgate_request(body, key="wrong"))
    with pytest.raises(WebhookForbidden):
        smsgate.parse_webhook(smsgate_request(body, headers={}))
    with pytest.raises(WebhookForbidden):
        smsgate.parse_webhook(smsgate_request(body, ts=int(time.time()) - 3600))
    stamp = str(int(time.time()))
    with pytest.raises(WebhookForbidden):  # a signature over another body
        smsgate.parse_webhook(smsgate_request(body, headers={"X-Signature": sign("k3y", b"{}", stamp),
                                                             "X-Timestamp": stamp}))


async def test_smsgate_signed_garbage_is_malformed(smsgate: SmsGateBackend) -> None:
    for body in (b"not json", b"[]", envelope("sms:received", {"message": "no id"})):
        with pytest.raises(WebhookMalformed):
            smsgate.parse_webhook(smsgate_request(body))
    assert smsgate.parse_webhook(smsgate_request(envelope("system:ping", {}))) == []


async def test_smsgate_mms_attachments(smsgate: SmsGateBackend) -> None:
    body = envelope("mms:downloaded", {
        "messageId": "mm1", "phoneNumber": "+33612345678", "body": "look", "receivedAt": "2024-06-22T08:46:11Z",
        "attachments": [{"partId": 1, "contentType": "image/jpeg", "data": "/9j/4AAQ", "name": "a.jpg"},
                        {"partId": 2, "contentType": "video/mp4", "data": None},
                        {"partId": 3, "contentType": "application/smil"}]})
    [msg] = smsgate.parse_webhook(smsgate_request(body))
    assert isinstance(msg, MessageReceived) and msg.text == "look" and len(msg.media) == 2
    assert msg.media[0].ref.startswith("data:image/jpeg;base64,") and msg.media[0].filename == "a.jpg"
    assert msg.media[1].ref == "http://127.0.0.1:9/api/inbox/mm1/attachments/2"


# --- Twilio webhooks ---------------------------------------------------------------------------


@pytest.fixture
async def twilio() -> TwilioBackend:
    async with aiohttp.ClientSession() as session:
        yield TwilioBackend(session, account_sid=SID, auth_token=TOKEN, phone_number="+15005550006",
                            webhook_base=PUBLIC, api_url="http://127.0.0.1:9")


def twilio_request(kind: str, params: list[tuple[str, str]], *, url: str | None = None, token: str = TOKEN
                   ) -> WebhookRequest:
    signed_url = url or f"{PUBLIC}/{kind}"
    from multidict import MultiDict

    signature = RequestValidator(token).compute_signature(signed_url, MultiDict(params))
    return WebhookRequest("POST", f"{PUBLIC}/{kind}", kind, {"X-Twilio-Signature": signature},
                          urlencode(params).encode(), "application/x-www-form-urlencoded")


async def test_twilio_inbound_with_media(twilio: TwilioBackend) -> None:
    params = [("MessageSid", "MM" + "a" * 32), ("AccountSid", SID), ("From", "+33612345678"),
              ("To", "+15005550006"), ("Body", "héllo ✓"), ("NumMedia", "2"),
              ("MediaUrl0", "http://127.0.0.1:9/m/0"), ("MediaContentType0", "image/png"),
              ("MediaUrl1", "http://127.0.0.1:9/m/1"), ("MediaContentType1", "audio/amr")]
    [msg] = twilio.parse_webhook(twilio_request("twilio-inbound", params))
    assert isinstance(msg, MessageReceived) and msg.text == "héllo ✓" and msg.sender == "+33612345678"
    assert [(m.ref, m.mimetype) for m in msg.media] == [("http://127.0.0.1:9/m/0", "image/png"),
                                                         ("http://127.0.0.1:9/m/1", "audio/amr")]


async def test_twilio_signature_covers_the_public_url_and_every_param(twilio: TwilioBackend) -> None:
    params = [("MessageSid", "SM" + "b" * 32), ("AccountSid", SID), ("From", "+33612345678"), ("Body", "x")]
    with pytest.raises(WebhookForbidden):  # signed for the internal URL, not the public one
        twilio.parse_webhook(twilio_request("twilio-inbound", params, url="http://127.0.0.1:29340/x/twilio-inbound"))
    with pytest.raises(WebhookForbidden):
        twilio.parse_webhook(twilio_request("twilio-inbound", params, token="another-token"))
    forged = twilio_request("twilio-inbound", params)
    tampered = WebhookRequest(forged.method, forged.url, forged.kind, forged.headers,
                              forged.body.replace(b"Body=x", b"Body=y"), forged.content_type)
    with pytest.raises(WebhookForbidden):
        twilio.parse_webhook(tampered)
    other = [(k, v if k != "AccountSid" else "AC" + "f" * 32) for k, v in params]
    with pytest.raises(WebhookForbidden):
        twilio.parse_webhook(twilio_request("twilio-inbound", other))
    with pytest.raises(WebhookForbidden):
        twilio.parse_webhook(WebhookRequest("POST", forged.url, forged.kind, {}, forged.body, forged.content_type))


@pytest.mark.parametrize("status,state", [("queued", MessageState.QUEUED), ("sent", MessageState.SENT),
                                          ("delivered", MessageState.DELIVERED),
                                          ("undelivered", MessageState.FAILED)])
async def test_twilio_status_callbacks(twilio: TwilioBackend, status: str, state: MessageState) -> None:
    params = [("MessageSid", "SM" + "c" * 32), ("AccountSid", SID), ("MessageStatus", status),
              ("To", "+33612345678"), ("From", "+15005550006")]
    if state == MessageState.FAILED:
        params.append(("ErrorCode", "30003"))
    [update] = twilio.parse_webhook(twilio_request("twilio-status", params))
    assert isinstance(update, StatusUpdate) and update.state == state
    if state == MessageState.FAILED:
        assert update.error and "switched off" in update.error and "30003" in update.error


async def test_twilio_malformed(twilio: TwilioBackend) -> None:
    with pytest.raises(WebhookMalformed):
        twilio.parse_webhook(twilio_request("twilio-status", [("AccountSid", SID), ("MessageSid", "SM1")]))
    with pytest.raises(WebhookMalformed):
        twilio.parse_webhook(twilio_request("twilio-inbound", [("AccountSid", SID), ("MessageSid", "SM1"),
                                                               ("From", "+1"), ("NumMedia", "1")]))


# --- gammu's files -------------------------------------------------------------------------------


def backup_section(index: int, text: str, *, udh: str = "", pdu: str = "Deliver", ref: int = 0) -> str:
    return (f"[SMSBackup{index:03d}]\n; {text}\nSMSC = \"+33600000000\"\nPDU = {pdu}\n"
            f"DateTime = 20261127T073500Z\nNumber = \"+33612345678\"\n"
            + (f"UDH = {udh}\n" if udh else "")
            + f"Text00 = {text.encode('utf-16-be').hex().upper()}\nCoding = Unicode_No_Compression\n"
            f"MessageReference = {ref}\n")


def test_gammu_detail_file_joins_parts_in_udh_order(tmp_path: Path) -> None:
    path = tmp_path / "IN20261127_073500_00_+33612345678_00.txt"
    path.write_text("; header\n\n" + backup_section(1, "second ✓", udh="050003AB0202") + "\n"
                    + backup_section(0, "Première 😀 ", udh="050003AB0201"))
    item = read_inbox_file(path)
    assert (item.kind, item.number, item.text) == ("message", "+33612345678", "Première 😀 second ✓")
    assert item.timestamp == int(datetime(2026, 11, 27, 7, 35, tzinfo=timezone.utc).timestamp() * 1000)


def test_gammu_status_report_and_plain_formats(tmp_path: Path) -> None:
    report = tmp_path / "IN20261127_073310_00_+33698765432_00.txt"
    report.write_text(backup_section(0, "Delivered", pdu="Status_Report", ref=255))
    item = read_inbox_file(report)
    assert (item.kind, item.text, item.reference) == ("report", "Delivered", 255)
    unicode_file = tmp_path / "IN20261127_073000_01_+33612345678_00.txt"
    unicode_file.write_bytes(b"\xff\xfe" + "Ünïcode".encode("utf-16-le"))
    assert read_inbox_file(unicode_file).text == "Ünïcode"
    with pytest.raises(ValueError):
        read_inbox_file(tmp_path / "OUTsomething.txt")


def test_gammu_backup_parser_and_segments() -> None:
    [section] = parse_backup(backup_section(0, "a=b \"q\""))
    assert section_text(section) == "a=b \"q\"" and section["number"] == "+33612345678"
    assert segments_needed("x" * 160) == 1 and segments_needed("x" * 161) == 2
    assert segments_needed("€" * 80) == 1  # two septets each
    assert segments_needed("é" * 160) == 1  # é is in the GSM alphabet
    assert segments_needed("ï" * 70) == 1 and segments_needed("ï" * 71) == 2
    assert segments_needed("😀" * 35) == 1  # a surrogate pair is two UCS-2 units
