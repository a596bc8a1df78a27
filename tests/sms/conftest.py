"""Fixtures for the SMS connector tests: the BridgeAPI double, emulators, connector and logins."""

from __future__ import annotations

import secrets
from collections.abc import AsyncIterator, Awaitable, Callable
from typing import Any

import pytest

from bridges.core.network import LoginState, StepType, UserLoginInfo
from bridges.sms.client import SmsClient
from bridges.sms.connector import Connector
from tests.emulators.smsgate import SmsGateEmulator
from tests.emulators.twilio import TwilioEmulator
from tests.sms.bridge_double import BridgeDouble

FAST_HTTP = {"attempts": 3, "first_delay": 0.01, "timeout": 10}


@pytest.fixture
async def fake_core() -> AsyncIterator[BridgeDouble]:
    double = BridgeDouble()
    await double.start()
    yield double
    await double.stop()


@pytest.fixture
async def smsgate() -> AsyncIterator[SmsGateEmulator]:
    emu = SmsGateEmulator()
    await emu.start()
    yield emu
    await emu.stop()
    assert emu.violations == [], "the bridge or the emulator broke the SMSGate spec"


@pytest.fixture
async def twilio() -> AsyncIterator[TwilioEmulator]:
    emu = TwilioEmulator()
    await emu.start()
    yield emu
    await emu.stop()
    assert emu.violations == [], "the bridge or the emulator broke the Twilio spec"


ConnectorFactory = Callable[..., Awaitable[Connector]]


@pytest.fixture
async def make_connector(fake_core: BridgeDouble) -> AsyncIterator[ConnectorFactory]:
    made: list[Connector] = []

    async def make(**section: Any) -> Connector:
        config = {"enabled": True, "ghost_prefix": "sms_", "displayname_template": "{name} (SMS)",
                  "http": FAST_HTTP, **section}
        connector = Connector(fake_core, config)
        await connector.start()
        made.append(connector)
        return connector

    yield make
    for connector in made:
        await connector.stop()


LoginFactory = Callable[..., Awaitable[SmsClient]]


@pytest.fixture
async def login(fake_core: BridgeDouble) -> AsyncIterator[LoginFactory]:
    """Run a login flow to completion, load its client and connect it."""
    clients: list[SmsClient] = []

    async def run(connector: Connector, flow: str, values: dict[str, str], *, user: str = "@alice:example.org",
                  wait_connected: bool = True) -> SmsClient:
        process = connector.create_login(user, flow)
        step = await process.start()
        assert step.type == StepType.USER_INPUT
        done = await process.submit_input(values)
        assert done.type == StepType.COMPLETE and done.result is not None
        result = done.result
        info = UserLoginInfo(id=f"sms-{secrets.token_hex(3)}", user_mxid=user, remote_id=result.remote_id,
                             remote_name=result.remote_name, metadata=dict(result.metadata),
                             secrets=dict(result.secrets))
        client = connector.load_login(info)
        clients.append(client)
        await client.connect()
        if wait_connected:
            await fake_core.wait_for(lambda: fake_core.state_of(info.id) == LoginState.CONNECTED, what="CONNECTED")
        return client

    yield run
    for client in clients:
        await client.disconnect()


def smsgate_values(emu: SmsGateEmulator, **extra: str) -> dict[str, str]:
    return {"phone_number": "06 99 99 99 99", "country": "FR", "base_url": emu.base_url, "username": emu.username,
            "password": emu.password, "signing_key": emu.signing_key, **extra}


def twilio_values(emu: TwilioEmulator, **extra: str) -> dict[str, str]:
    return {"phone_number": next(iter(emu.numbers)), "country": "", "account_sid": emu.account_sid,
            "auth_token": emu.auth_token, **extra}
