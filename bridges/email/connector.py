"""The email network's connector: any IMAP/SMTP mailbox.

Capabilities: the required interface only; the optional ones are the client's
(:mod:`.client`: start chat, read receipts). One login flow, ``password``
(:mod:`.login`). Config: the ``networks.email`` section (:mod:`.config`).
"""

from __future__ import annotations

import logging
from typing import Any

from ..core.network import BridgeAPI, LoginFlow, NetworkCapabilities, UserLoginInfo
from . import privacy
from .client import EmailClient
from .config import EmailConfig
from .login import FLOW_ID, EmailLogin

log = logging.getLogger("caliopen.email")


class Connector:
    """The email network. ``__init__`` reads the config and does no I/O."""

    name = "email"
    display_name = "Email"

    def __init__(self, bridge: BridgeAPI, config: dict[str, Any]) -> None:
        self.bridge = bridge
        self.config = EmailConfig.from_section(config)
        self.dns_resolver: privacy.DnsResolver | None = None

    async def start(self) -> None:
        if self.config.verify_dkim:
            self.dns_resolver = privacy.dns_txt_resolver()

    async def stop(self) -> None:
        return None

    def get_login_flows(self) -> list[LoginFlow]:
        return [LoginFlow(FLOW_ID, "Password", "An IMAP/SMTP mailbox with its password or an app password")]

    def create_login(self, user_mxid: str, flow_id: str) -> EmailLogin:
        return EmailLogin(self.config, user_mxid)

    def load_login(self, login: UserLoginInfo) -> EmailClient:
        return EmailClient(self, login)

    def get_capabilities(self) -> NetworkCapabilities:
        return NetworkCapabilities(
            max_text_length=None,
            max_file_size=self.config.max_attachment_size,
            formatted_text=True,
            threads=True,
            media=True,
        )
