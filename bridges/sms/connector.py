"""The SMS network: one connector, a client per phone number, three backends.

Capabilities: the clients implement :class:`bridges.core.network.SupportsStartChat`.

``Connector(bridge, section)`` reads its config (no I/O; a bad key raises ConfigError);
``start`` opens the shared HTTP session and registers the webhook handler at
``/_caliopen/sms/``; ``load_login`` makes an :class:`SmsClient` without I/O.
"""

from __future__ import annotations

import hashlib
from typing import Any

import aiohttp

from bridges.core.errors import LoginError
from bridges.core.network import BridgeAPI, LoginFlow, NetworkCapabilities, UserLoginInfo

from .backends.base import SmsBackend
from .backends.gammu import GammuBackend, GammuPaths
from .backends.smsgate import SmsGateBackend
from .backends.twilio import TwilioBackend
from .client import SmsClient
from .config import SmsConfig
from .handle_remote import ClientMediaHost, WebhookRouter
from .login import FLOWS, SmsLogin


class Connector:
    name = "sms"
    display_name = "SMS"

    def __init__(self, bridge: BridgeAPI, config: dict[str, Any]) -> None:
        self.bridge = bridge
        self.config = SmsConfig.from_section(dict(config))
        self.router = WebhookRouter()
        self.session: aiohttp.ClientSession | None = None
        self.prefix = "/_caliopen/sms"

    async def start(self) -> None:
        self.session = aiohttp.ClientSession()
        self.prefix = self.bridge.register_webhook(self.name, self.router)

    async def stop(self) -> None:
        if self.session is not None:
            await self.session.close()

    @property
    def public_root(self) -> str:
        """The base URL gateways call the bridge at (what they sign)."""
        return (self.config.public_url or self.bridge.public_url).rstrip("/")

    @property
    def webhook_base(self) -> str:
        return self.public_root + self.prefix

    def get_login_flows(self) -> list[LoginFlow]:
        return [FLOWS[b] for b in self.config.backends if b != "gammu" or self.config.modems]

    def create_login(self, user_mxid: str, flow_id: str) -> SmsLogin:
        return SmsLogin(self, user_mxid, flow_id)

    def load_login(self, login: UserLoginInfo) -> SmsClient:
        return SmsClient(self, login)

    def get_capabilities(self) -> NetworkCapabilities:
        return NetworkCapabilities(max_text_length=None, max_file_size=self.config.max_media_size,
                                   formatted_text=False, threads=False, media=True)

    def make_backend(self, metadata: dict[str, Any], secrets: dict[str, Any]) -> SmsBackend:
        """The backend for a login's settings (no I/O). Raises LoginError for unusable settings."""
        if self.session is None:
            raise RuntimeError("the SMS connector is not started")
        kind = metadata.get("backend")
        secret = secrets["webhook_secret"]
        base = f"{self.webhook_base}/{secret}"
        if kind == "smsgate":
            # The webhook IDs stay the same for this number across logins, so a new login
            # replaces the old registrations instead of leaving them pointing nowhere.
            key = hashlib.sha256(f"{self.public_root}\0{metadata['phone_number']}".encode()).hexdigest()
            return SmsGateBackend(self.session, base_url=metadata["base_url"], username=metadata["username"],
                                  password=secrets["password"], signing_key=secrets["signing_key"],
                                  webhook_url=f"{base}/smsgate", max_age=self.config.smsgate_max_age,
                                  policy=self.config.http, hook_key=key)
        if kind == "twilio":
            return TwilioBackend(self.session, account_sid=metadata["account_sid"], auth_token=secrets["auth_token"],
                                 phone_number=metadata["phone_number"], webhook_base=base,
                                 api_url=self.config.twilio_api_url,
                                 media_host=ClientMediaHost(self.router, secret, base),
                                 configure_number=self.config.twilio_configure_number,
                                 max_media_size=self.config.max_media_size, policy=self.config.http)
        if kind == "gammu":
            modem = self.config.modems.get(str(metadata.get("modem")))
            if modem is None:
                raise LoginError(f"The modem {metadata.get('modem')!r} is no longer set up on this server.")
            paths = GammuPaths(inbox=modem.inbox, outbox=modem.outbox, sent=modem.sent, error=modem.error,
                               log=modem.log, done=modem.done)
            return GammuBackend(paths, phone_number=metadata["phone_number"], modem=modem.name,
                                poll_interval=self.config.gammu_poll_interval)
        raise LoginError(f"Unknown SMS backend {kind!r}.")


