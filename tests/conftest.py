"""Session-wide test servers: one Synapse, the fake network, and Caliopen bridges.

Two bridges share the Synapse: ``bridge`` on SQLite and ``pg_bridge`` on a real PostgreSQL,
each with its own registration, bot and ghost prefixes. Tests make unique users and rooms.
``pg_bridge`` has double puppeting (the Synapse also loads the double-puppeting registration
whose as_token it has); ``bridge`` has not, and keeps its users' own messages on ghosts.
With the SMS connector, ``sms_rig`` (tests/sms/e2e_rig.py) runs the SMS gateways both bridges
are configured for. With the email connector, ``mailservers`` (tests/rig/mail_fixtures.py: one
Dovecot, Postfix and sink for the session) start first, and both bridges trust their
certificate; tests make their own mailboxes with ``mailservers.add_user(...)``.
"""

from __future__ import annotations

import itertools
from collections.abc import AsyncIterator
from pathlib import Path
from typing import TYPE_CHECKING

import pytest
import pytest_asyncio

from bridges.config import Config, random_token, write_registration
from bridges.sandbox.synapse import free_port
from tests.fakes.remote import FakeRemote
from tests.rig.bridge import BridgeProcess, make_bridge_config

if TYPE_CHECKING:
    from tests.rig.mailservers import MailServers
    from tests.sms.e2e_rig import SmsRig

pytest_plugins = ["tests.rig.fixtures", "tests.rig.pg_fixtures", "tests.rig.mail_fixtures"]

DOMAIN = "caliopen.localhost"
BRIDGE_TAGS = ("sq", "pg")
# The bridge with double puppeting, and the file its double-puppeting registration is in.
DOUBLE_PUPPET_TAG = "pg"
DOUBLE_PUPPET_REGISTRATION = "doublepuppet.yaml"
_names = itertools.count(1)


def unique(name: str) -> str:
    return f"{name}{next(_names)}"


@pytest.fixture(scope="session")
def synapse_port() -> int:
    return free_port()


@pytest_asyncio.fixture(scope="session", loop_scope="session")
async def fake_remote() -> AsyncIterator[FakeRemote]:
    remote = FakeRemote()
    await remote.start()
    yield remote
    await remote.stop()


def _available(module: str) -> bool:
    import importlib.util

    try:
        return importlib.util.find_spec(module) is not None
    except ModuleNotFoundError:
        return False


@pytest_asyncio.fixture(scope="session", loop_scope="session")
async def sms_rig(tmp_path_factory: pytest.TempPathFactory) -> AsyncIterator[SmsRig | None]:
    """The SMS gateways of the session's bridges (Twilio and SMSGate emulators, a gammu-smsd per
    bridge), started before the bridge configs are written; None without the SMS connector.
    At the end, no emulator may have seen a request or answer that breaks its spec."""
    if not _available("bridges.sms.connector"):
        yield None
        return
    from tests.sms.e2e_rig import SmsRig

    rig = SmsRig(tmp_path_factory.mktemp("sms"), tags=BRIDGE_TAGS, domain=DOMAIN)
    await rig.start()
    yield rig
    await rig.stop()
    assert rig.violations() == [], "the bridges or the emulators broke the SMSGate or Twilio spec"


@pytest.fixture(scope="session")
def email_servers(request: pytest.FixtureRequest) -> MailServers | None:
    """The session's ``mailservers``, started before the bridge configs are written (the bridges
    trust their certificate); None without the email connector."""
    if not _available("bridges.email.connector"):
        return None
    servers: MailServers = request.getfixturevalue("mailservers")
    return servers


def email_section(servers: MailServers) -> dict:
    """The ``networks.email`` section for the session's mail servers (no I/O): their CA, plain
    IMAP/SMTP to loopback, a whole test mailbox at the first sync, no DKIM lookups (no DNS
    here), and quick reconnects."""
    return {"enabled": True, "tls_ca_file": str(servers.ca_file), "initial_sync_messages": 1000,
            "verify_dkim": False, "reconnect_max_delay": 3.0, "allow_plaintext_loopback": True}


def enable_double_puppeting(cfg: Config) -> None:
    """Give ``cfg`` a double-puppeting token and write its registration beside the config."""
    assert cfg.path is not None
    cfg.set("homeserver.double_puppet_as_token", random_token())
    cfg.save()
    write_registration(cfg, cfg.path.parent / DOUBLE_PUPPET_REGISTRATION, cfg.double_puppet_registration())


@pytest.fixture(scope="session")
def bridge_configs(tmp_path_factory: pytest.TempPathFactory, synapse_port: int, fake_remote: FakeRemote,
                   sms_rig: SmsRig | None, email_servers: MailServers | None) -> dict:
    """Configs of the session's bridges: the fake network always, and every real network whose
    connector exists (its section from example-config.yaml, plus what its tests need, e.g. the
    mail servers of ``email_servers``, or the SMS gateways of ``sms_rig``)."""
    root = tmp_path_factory.mktemp("bridges")
    fake = {"fake": {"enabled": True, "module": "tests.fakes.network", "remote_url": fake_remote.url}}
    if email_servers is not None:
        fake["email"] = email_section(email_servers)
    configs = {
        tag: make_bridge_config(root / tag, tag=tag, domain=DOMAIN,
                                homeserver_url=f"http://127.0.0.1:{synapse_port}", db_url=None,
                                networks={**fake, **({"sms": sms_rig.network_section(tag)} if sms_rig else {})})
        for tag in BRIDGE_TAGS
    }
    enable_double_puppeting(configs[DOUBLE_PUPPET_TAG])
    return configs


@pytest.fixture(scope="session")
def appservice_files(bridge_configs: dict) -> list[Path]:
    files = [cfg.path.parent / "appservice.yaml" for cfg in bridge_configs.values()]
    return files + [bridge_configs[DOUBLE_PUPPET_TAG].path.parent / DOUBLE_PUPPET_REGISTRATION]


@pytest_asyncio.fixture(scope="session", loop_scope="session")
async def synapse(synapse_factory, appservice_files, synapse_port):  # type: ignore[no-untyped-def]
    return await synapse_factory(appservice_files=appservice_files, server_name=DOMAIN, port=synapse_port)


@pytest_asyncio.fixture(scope="session", loop_scope="session")
async def bridge(synapse, bridge_configs) -> AsyncIterator[BridgeProcess]:  # type: ignore[no-untyped-def]
    proc = BridgeProcess(bridge_configs["sq"])
    await proc.start()
    yield proc
    code = await proc.stop()
    assert code == 0, f"the bridge did not stop cleanly ({code}):\n{proc.log_tail()}"


@pytest_asyncio.fixture(scope="session", loop_scope="session")
async def pg_bridge(synapse, bridge_configs, postgres_server) -> AsyncIterator[BridgeProcess]:  # type: ignore[no-untyped-def]
    cfg = bridge_configs["pg"]
    cfg.set("database.url", await postgres_server.create_database("caliopen_e2e"))
    cfg.save()
    proc = BridgeProcess(cfg)
    await proc.start()
    yield proc
    code = await proc.stop()
    assert code == 0, f"the bridge did not stop cleanly ({code}):\n{proc.log_tail()}"


@pytest.fixture(params=["sqlite", "postgres"])
def any_bridge(request: pytest.FixtureRequest) -> BridgeProcess:
    """The test runs once with the SQLite bridge and once with the PostgreSQL one."""
    return request.getfixturevalue("bridge" if request.param == "sqlite" else "pg_bridge")
