"""The emulators' own honesty: the specs are found, validation bites, the allow-list is needed."""

from __future__ import annotations

import base64
import json
from pathlib import Path

import aiohttp
import pytest
from aiohttp import web
from aiohttp.test_utils import make_mocked_request

from bridges.sms.backends.http import basic_auth
from tests.emulators import openapi_check, spec_deviations
from tests.emulators.openapi_check import SpecChecker, SpecMissing, load_spec, specs_dir
from tests.emulators.smsgate import SmsGateEmulator
from tests.emulators.twilio import TwilioEmulator


def test_specs_are_found_beside_the_repository() -> None:
    assert specs_dir() == Path(openapi_check.REPO_ROOT).parent / "shared" / "specs"
    assert (specs_dir() / "smsgate-openapi.json").exists()


def test_missing_specs_fail_clearly(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    monkeypatch.setattr(openapi_check, "REPO_ROOT", tmp_path / "checkout")
    with pytest.raises(SpecMissing, match="shared/specs"):
        specs_dir()


@pytest.mark.parametrize("deviation", spec_deviations.DEVIATIONS, ids=lambda d: d.patch.__name__)
def test_every_deviation_still_changes_the_spec(deviation: spec_deviations.Deviation) -> None:
    spec = load_spec(deviation.spec, patched=False)
    assert deviation.patch(spec) > 0, f"stale allow-list entry: {deviation.what}"
    assert deviation.why and deviation.what


def test_the_raw_specs_really_reject_the_real_shapes() -> None:
    """Without the allow-list, the services' real answers fail: the entries are needed."""
    raw = SpecChecker.__new__(SpecChecker)
    raw.spec, raw.violations, raw.checked, raw._schema_path = load_spec("smsgate-openapi.json", patched=False), [], 0, None
    real = {"id": "x", "deviceId": "d", "state": "Pending", "recipients": [{"phoneNumber": "+33612345678",
                                                                              "state": "Pending"}]}
    assert raw.check_schema("smsgateway.GetMessageResponse", real, "raw")
    received = {"deviceId": "d", "event": "sms:received", "id": "e", "webhookId": "w",
                "payload": {"messageId": "m", "message": "hi", "phoneNumber": "+33612345678",
                            "receivedAt": "2024-06-22T15:46:11.000+07:00"}}
    assert raw.check_schema("WebHookEvent", received, "raw")
    patched = SpecChecker("smsgate-openapi.json", "http://127.0.0.1:1/api")
    assert patched.check_schema("smsgateway.GetMessageResponse", real, "patched") == []
    assert patched.check_schema("WebHookEvent", received, "patched") == []
    assert patched.check_schema("SmsReceivedPayload", {"messageId": 5}, "wrong") != []


async def test_validation_catches_bad_requests_and_responses() -> None:
    emu = SmsGateEmulator()
    await emu.start()
    auth = {"Authorization": basic_auth(emu.username, emu.password)}
    try:
        async with aiohttp.ClientSession() as http:
            async with http.post(f"{emu.base_url}/messages", json={"textMessage": {"text": "no recipients"}},
                                 headers=auth) as resp:
                await resp.read()
            async with http.post(f"{emu.base_url}/webhooks", json={"url": "http://x", "event": "sms:nope"},
                                 headers=auth) as resp:
                await resp.read()
        assert any("phoneNumbers" in v for v in emu.violations), emu.violations
        assert any("sms:nope" in v for v in emu.violations), emu.violations
    finally:
        await emu.stop()
    checker = SpecChecker("smsgate-openapi.json", "http://127.0.0.1:8080/api")
    req = make_mocked_request("POST", "/api/messages", headers={"Host": "127.0.0.1:8080",
                                                                "Authorization": "Basic dTpw",
                                                                "Content-Type": "application/json"})
    body = json.dumps({"phoneNumbers": ["+33612345678"], "textMessage": {"text": "hi"}}).encode()
    good = web.json_response({"id": "m", "deviceId": "d", "state": "Pending",
                              "recipients": [{"phoneNumber": "+33612345678", "state": "Pending"}]}, status=202)
    bad = web.json_response({"id": "m", "state": "Teleported"}, status=202)
    assert checker.check_response(req, body, good) == []
    assert checker.check_response(req, body, bad) != []


async def test_twilio_emulator_answers_errors_in_twilios_shape() -> None:
    emu = TwilioEmulator()
    await emu.start()
    try:
        auth = "Basic " + base64.b64encode(f"{emu.account_sid}:wrong".encode()).decode()
        async with aiohttp.ClientSession() as http:
            async with http.get(f"{emu.base_url}/2010-04-01/Accounts/{emu.account_sid}.json",
                                headers={"Authorization": auth}) as resp:
                body = await resp.json()
        assert resp.status == 401 and body["code"] == 20003 and body["status"] == 401
        assert emu.violations == []
    finally:
        await emu.stop()
