"""The SMS connector with Twilio: login, number configuration, signed webhooks against the public
URL behind a proxy, MMS both ways (outgoing media served by the bridge), delivery states."""

from __future__ import annotations

import secrets
from urllib.parse import urlsplit

import pytest

from bridges.core.errors import LoginError, SendError
from bridges.core.events import MatrixMessage, Media, PortalRef, RemoteEventKind
from tests.emulators.twilio import TwilioEmulator
from tests.sms.bridge_double import BridgeDouble
from tests.sms.conftest import twilio_values

PUBLIC = "https://sms-bridge.example.org"
PNG = b"\x89PNG\r\n\x1a\n" + secrets.token_bytes(200)


@pytest.fixture
async def proxied(fake_core: BridgeDouble, twilio: TwilioEmulator) -> TwilioEmulator:
    """Twilio calls the public URL; a proxy (the route) forwards it to the bridge's address."""
    twilio.route = lambda url: url.replace(PUBLIC, fake_core.public_url)
    return twilio


def message(client, body: str, **kw) -> MatrixMessage:  # type: ignore[no-untyped-def]
    return MatrixMessage(event_id=f"${secrets.token_hex(4)}", portal=PortalRef("+33612345678", client.login.id, None, {}),
                         sender_mxid=client.login.user_mxid, msgtype=kw.pop("msgtype", "m.text"), body=body, **kw)


async def test_login_and_number_configuration(make_connector, login, proxied: TwilioEmulator) -> None:
    connector = await make_connector(public_url=PUBLIC, twilio={"api_url": proxied.base_url})
    process = connector.create_login("@alice:example.org", "twilio")
    await process.start()
    with pytest.raises(LoginError, match="refused the Account SID or Auth Token"):
        await process.submit_input(twilio_values(proxied, auth_token="0" * 32))
    with pytest.raises(LoginError, match="not a number of this Twilio account"):
        await process.submit_input(twilio_values(proxied, phone_number="+1 415 555 0100"))
    client = await login(connector, "twilio", twilio_values(proxied))
    assert client.region == "US" and client.own_number == next(iter(proxied.numbers))
    sms_url = proxied.numbers[client.own_number]["sms_url"]
    assert sms_url == f"{PUBLIC}/_caliopen/sms/{client.secret}/twilio-inbound"


async def test_inbound_mms_through_the_proxy(make_connector, login, fake_core: BridgeDouble,
                                             proxied: TwilioEmulator) -> None:
    connector = await make_connector(public_url=PUBLIC, twilio={"api_url": proxied.base_url})
    client = await login(connector, "twilio", twilio_values(proxied))
    sid, call = await proxied.inject_sms("+33612345678", "Regarde ça 📷", media=[(PNG, "image/png")])
    assert call.status == 200 and call.body.startswith(b"<?xml")
    [event] = fake_core.queued
    assert (event.remote_id, event.portal_id, event.kind) == (sid, "+33612345678", RemoteEventKind.MESSAGE)
    converted = await client.convert_remote(PortalRef(event.portal_id, client.login.id, None, {}), event)
    text, image = converted.parts
    assert text.content == {"msgtype": "m.text", "body": "Regarde ça 📷"}
    assert image.content["msgtype"] == "m.image" and image.media is not None and image.media.data == PNG
    assert converted.privacy is not None and converted.privacy["third_party"] is True
    assert "Twilio" in converted.privacy["seen_by"]

    # Retried by Twilio: bridged once. Signed for the bridge's internal URL: refused.
    again = await proxied.post_raw(call.url, call.params)
    internal = call.url.replace(PUBLIC, fake_core.public_url)
    forged = await proxied.post_raw(call.url, call.params, signature=proxied.sign(internal, call.params))
    unsigned = await proxied.post_raw(call.url, call.params, signature="")
    assert (again.status, forged.status, unsigned.status) == (200, 403, 403)
    assert len(fake_core.queued) == 1


async def test_outbound_mms_and_statuses(make_connector, login, fake_core: BridgeDouble,
                                         proxied: TwilioEmulator) -> None:
    connector = await make_connector(public_url=PUBLIC, twilio={"api_url": proxied.base_url})
    client = await login(connector, "twilio", twilio_values(proxied))
    sent = await client.handle_matrix_message(message(client, "my caption", msgtype="m.image",
                                                      media=Media(PNG, "image/png", "photo.png")))
    [msg] = proxied.sent
    assert msg.sid == sent.remote_id and msg.body == "my caption" and msg.to == "+33612345678"
    [(url, status, ctype, data)] = proxied.fetched_media
    assert (status, ctype, data) == (200, "image/png", PNG)
    assert url.startswith(f"{PUBLIC}/_caliopen/sms/{client.secret}/media/") and len(urlsplit(url).path) > 60
    # Another login's path, or a guessed token, gets nothing.
    assert (await proxied.post_raw(url.replace(client.secret, "x" * 32), [])).status == 404

    await proxied.status(sent.remote_id, "sent")
    await proxied.status(sent.remote_id, "sent")
    await proxied.status(sent.remote_id, "undelivered", error_code=30003)
    states = [(e.target_id, e.data["state"]) for e in fake_core.events(RemoteEventKind.DELIVERY)]
    assert states == [(sent.remote_id, "sent"), (sent.remote_id, "failed")]
    assert "switched off" in fake_core.events(RemoteEventKind.DELIVERY)[-1].data["error"]


async def test_bad_numbers_and_outages(make_connector, login, proxied: TwilioEmulator) -> None:
    connector = await make_connector(public_url=PUBLIC, twilio={"api_url": proxied.base_url})
    client = await login(connector, "twilio", twilio_values(proxied))
    bad = MatrixMessage(event_id="$bad", portal=PortalRef("+123456", client.login.id, None, {}),
                        sender_mxid=client.login.user_mxid, msgtype="m.text", body="hello")
    with pytest.raises(SendError) as refused:
        await client.handle_matrix_message(bad)
    assert not refused.value.retryable and "Invalid 'To' Phone Number" in refused.value.user_message
    proxied.fail_next_sends(50)
    with pytest.raises(SendError) as err:
        await client.handle_matrix_message(message(client, "down"))
    assert err.value.retryable
    proxied.fail_next_sends(0)
    with pytest.raises(SendError, match="at most 1600"):
        await client.handle_matrix_message(message(client, "x" * 2000))
    assert proxied.sent == []
