"""Making an email connector, a login and a client against the rig, for connector tests."""

from __future__ import annotations

from typing import Any

from bridges.core.network import StepType
from bridges.email.client import EmailClient
from bridges.email.connector import Connector
from tests.email.fake_bridge import RecordingBridge, login_info
from tests.rig.mailservers import MailServers


def make_connector(servers: MailServers, **section: Any) -> tuple[Connector, RecordingBridge]:
    bridge = RecordingBridge()
    cfg = {
        "enabled": True,
        "tls_ca_file": str(servers.ca_file),
        "verify_dkim": False,
        "poll_interval": 0.2,
        "reconnect_max_delay": 1.0,
        "timeout": 20.0,
        **section,
    }
    return Connector(bridge, cfg), bridge


def login_values(servers: MailServers, address: str, password: str | None = None, **over: str) -> dict[str, str]:
    return {
        "email": address,
        "display_name": "",
        "imap_host": servers.host,
        "imap_port": str(servers.imaps_port),
        "imap_security": "tls",
        "smtp_host": servers.host,
        "smtp_port": str(servers.submission_port),
        "smtp_security": "starttls",
        "username": "",
        "password": password if password is not None else servers.password(address),
        **over,
    }


async def logged_in_client(connector: Connector, servers: MailServers, address: str,
                           login_id: str = "L1", **over: str) -> EmailClient:
    """Run the login flow for ``address`` and load its client (not connected)."""
    process = connector.create_login("@alice:test", "password")
    await process.start()
    step = await process.submit_input(login_values(servers, address, **over))
    assert step.type == StepType.COMPLETE and step.result is not None
    info = login_info(login_id, step.result.metadata, step.result.secrets["password"])
    return connector.load_login(info)


def reload_client(connector: Connector, bridge: RecordingBridge, old: EmailClient) -> EmailClient:
    """A new client of the same login, from the metadata the old one saved (a restart)."""
    metadata = bridge.metadata.get(old.login_id, old.login.metadata)
    return connector.load_login(login_info(old.login_id, metadata, old.account.password))
