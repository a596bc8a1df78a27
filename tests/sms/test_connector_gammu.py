"""The SMS connector with a GSM modem (a real gammu-smsd), its config, and group conversations."""

from __future__ import annotations

from collections.abc import AsyncIterator
from pathlib import Path

import pytest

from bridges.core.errors import ConfigError, UserInputError
from bridges.core.events import DeliveryState, MatrixMessage, PortalRef, RemoteEventKind
from bridges.sms.backends.base import MessageReceived
from bridges.sms.config import SmsConfig
from bridges.sms.handle_remote import remote_events
from tests.emulators.smsgate import SmsGateEmulator
from tests.rig import gammu as rig
from tests.sms.bridge_double import BridgeDouble
from tests.sms.conftest import smsgate_values

ALICE = "@alice:example.org"


@pytest.fixture
async def smsd(tmp_path: Path) -> AsyncIterator[rig.GammuSmsd]:
    if not rig.available():
        pytest.skip("gammu-smsd is not installed (scripts/apt-packages.txt)")
    daemon = rig.GammuSmsd(tmp_path / "smsd")
    await daemon.start()
    yield daemon
    await daemon.stop()


def modem_section(daemon: rig.GammuSmsd, users: list[str]) -> dict:
    return {"poll_interval": 0.1, "modems": {"usb0": {
        "inbox": str(daemon.inbox), "outbox": str(daemon.outbox), "sent": str(daemon.sent),
        "error": str(daemon.error), "log": str(daemon.log), "users": users}}}


async def test_modem_round_trip(make_connector, login, fake_core: BridgeDouble, smsd: rig.GammuSmsd) -> None:
    connector = await make_connector(default_country="FR", gammu=modem_section(smsd, [ALICE]))
    assert "gammu" in [f.id for f in connector.get_login_flows()]
    with pytest.raises(UserInputError, match="No GSM modem"):
        await connector.create_login("@bob:example.org", "gammu").start()
    client = await login(connector, "gammu", {"phone_number": "0699999999", "country": "", "modem": "usb0"},
                         user=ALICE)
    assert client.own_number == "+33699999999"

    smsd.inject_sms("0612345678", "Un SMS du modem ✓")  # national format, as some networks send it
    event = await fake_core.wait_for(lambda: fake_core.events(RemoteEventKind.MESSAGE), what="a message")
    assert event[0].portal_id == "+33612345678"
    converted = await client.convert_remote(PortalRef("+33612345678", client.login.id, None, {}), event[0])
    assert converted.parts[0].content["body"] == "Un SMS du modem ✓"
    assert converted.privacy is not None and converted.privacy["backend"] == "gammu"
    assert converted.privacy["third_party"] is False

    reply = MatrixMessage(event_id="$r", portal=PortalRef("+33612345678", client.login.id, None, {}),
                          sender_mxid=ALICE, msgtype="m.emote", body="waves 👋")
    sent = await client.handle_matrix_message(reply)
    assert sent.state == DeliveryState.QUEUED
    out = await smsd.wait_sent("* waves 👋")
    assert out.number == "+33612345678"
    await fake_core.wait_for(lambda: [e for e in fake_core.events(RemoteEventKind.DELIVERY)
                                      if e.data["state"] == "sent"], what="sent")
    smsd.inject_report("+33612345678")
    delivered = await fake_core.wait_for(lambda: [e for e in fake_core.events(RemoteEventKind.DELIVERY)
                                                  if e.data["state"] == "delivered"], what="delivered")
    assert delivered[0].target_id == sent.remote_id and delivered[0].portal_id == "+33612345678"


def test_config_errors_name_the_key() -> None:
    cases = [
        ({"default_country": "France"}, "networks.sms.default_country"),
        ({"public_url": "sms.example.org"}, "networks.sms.public_url"),
        ({"backends": ["smsgate", "carrier-pigeon"]}, "networks.sms.backends"),
        ({"twilio": {"configure_number": "yes"}}, "networks.sms.twilio.configure_number"),
        ({"http": {"attempts": 0}}, "networks.sms.http.attempts"),
        ({"gammu": {"modems": {"usb0": {"inbox": "/a", "outbox": "/b", "sent": "/c", "error": "/d"}}}},
         "networks.sms.gammu.modems.usb0.users"),
        ({"gammu": {"modems": {"usb0": {"inbox": "relative", "users": [ALICE]}}}},
         "networks.sms.gammu.modems.usb0.inbox"),
    ]
    for section, key in cases:
        with pytest.raises(ConfigError) as err:
            SmsConfig.from_section(section)
        assert err.value.key == key, section
    assert SmsConfig.from_section({}).backends == ("smsgate", "twilio", "gammu")


async def test_group_mms_gets_one_room_per_set_of_people(make_connector, login, smsgate: SmsGateEmulator) -> None:
    connector = await make_connector()
    client = await login(connector, "smsgate", smsgate_values(smsgate))
    first = MessageReceived(id="g1", sender="+33612345678", text="hi all", timestamp=1,
                            participants=("+33612345678", "+33700000002", "+33699999999"))
    second = MessageReceived(id="g2", sender="0700000002", text="hello", timestamp=2,
                             participants=("+33699999999", "+33700000002", "+33612345678"))
    [a] = remote_events(client, first)
    [b] = remote_events(client, second)
    assert a.portal_id == b.portal_id == "+33612345678,+33700000002"  # our own number is not a member
    assert b.sender.remote_id == "+33700000002"
    assert a.chat_info is not None and not a.chat_info.is_direct and a.chat_info.name
    # SMSGate sends one message to every member of the group.
    msg = MatrixMessage(event_id="$g", portal=PortalRef(a.portal_id, client.login.id, None, {}),
                        sender_mxid=ALICE, msgtype="m.text", body="to both")
    await client.handle_matrix_message(msg)
    assert smsgate.sent[-1].phone_numbers == ["+33612345678", "+33700000002"]
