"""Login flows: ``smsgate`` (your Android phone), ``twilio`` (a rented number), ``gammu`` (a modem).

Capabilities: none (logins only). Each flow asks for its settings in one step, checks them
against the gateway (``SmsBackend.check``, I/O) and completes; a refusal raises
:class:`bridges.core.errors.LoginError` and the step can be tried again. The core persists the
result (secrets encrypted).
"""

from __future__ import annotations

import secrets
from typing import TYPE_CHECKING

import phonenumbers

from bridges.core.errors import LoginError, UserInputError
from bridges.core.network import FieldType, LoginField, LoginFlow, LoginResult, LoginStep, StepType

from . import ids
from .convert import LABELS

if TYPE_CHECKING:
    from .connector import Connector

FLOWS = {
    "smsgate": LoginFlow("smsgate", "SMSGate: your own Android phone",
                         "The SMSGate app on your phone sends and receives; no other company sees your SMS."),
    "twilio": LoginFlow("twilio", "Twilio: a rented number",
                        "A number from your Twilio account; Twilio sees the messages."),
    "gammu": LoginFlow("gammu", "GSM modem on the bridge's server",
                       "A modem the server's admin set up for you with gammu-smsd."),
}


class SmsLogin:
    def __init__(self, connector: Connector, user_mxid: str, flow_id: str) -> None:
        self.connector = connector
        self.user_mxid = user_mxid
        self.flow_id = flow_id

    def _fields(self) -> tuple[LoginField, ...]:
        cfg = self.connector.config
        common = (
            LoginField("phone_number", "phone number", FieldType.PHONE,
                       "the number of this phone or account, like +33612345678"),
            LoginField("country", "country", FieldType.TEXT,
                       "two-letter code used for numbers written without +country code (FR, US, ...)",
                       default=cfg.default_country, optional=True),
        )
        if self.flow_id == "smsgate":
            return common + (
                LoginField("base_url", "SMSGate API address", FieldType.URL,
                           "the app's Local Server address (http://<phone>:8080) or the Cloud Server's",
                           default=cfg.smsgate_default_url),
                LoginField("username", "SMSGate username", FieldType.USERNAME, "shown in the app"),
                LoginField("password", "SMSGate password", FieldType.PASSWORD, "shown in the app"),
                LoginField("signing_key", "webhook signing key", FieldType.PASSWORD,
                           "in the app: Settings → Webhooks → Signing Key"),
            )
        if self.flow_id == "twilio":
            return common + (
                LoginField("account_sid", "Twilio Account SID", FieldType.USERNAME, "ACxxxxxxxx… in the Twilio console"),
                LoginField("auth_token", "Twilio Auth Token", FieldType.PASSWORD, "in the Twilio console"),
            )
        modems = tuple(m.name for m in cfg.modems_for(self.user_mxid))
        return common + (LoginField("modem", "modem", FieldType.SELECT, "which modem", options=modems,
                                    default=modems[0] if len(modems) == 1 else None),)

    async def start(self) -> LoginStep:
        if self.flow_id == "gammu" and not self.connector.config.modems_for(self.user_mxid):
            raise UserInputError("No GSM modem is set up for you on this server; ask its admin.")
        return LoginStep(StepType.USER_INPUT, f"sms.{self.flow_id}.settings",
                         f"Connect SMS through {FLOWS[self.flow_id].name}.", fields=self._fields())

    async def submit_input(self, values: dict[str, str]) -> LoginStep:
        """Check the settings with the gateway (I/O); complete, or raise LoginError/UserInputError."""
        country = (values.get("country") or "").strip() or self.connector.config.default_country
        region = ids.valid_region(country) if country else None
        number = ids.normalise(values.get("phone_number", ""), region)
        if region is None:
            region = phonenumbers.region_code_for_number(phonenumbers.parse(number)) or None
        metadata: dict[str, str | None] = {"backend": self.flow_id, "phone_number": number, "country": region}
        secret_values: dict[str, str] = {"webhook_secret": secrets.token_urlsafe(24)}
        if self.flow_id == "smsgate":
            base_url = (values.get("base_url") or self.connector.config.smsgate_default_url).strip().rstrip("/")
            if not base_url.startswith(("http://", "https://")):
                raise LoginError("The SMSGate address must start with http:// or https://.")
            metadata.update(base_url=base_url, username=values.get("username", "").strip())
            secret_values.update(password=values.get("password", ""), signing_key=values.get("signing_key", "").strip())
        elif self.flow_id == "twilio":
            metadata.update(account_sid=values.get("account_sid", "").strip())
            secret_values.update(auth_token=values.get("auth_token", "").strip())
        else:
            allowed = {m.name for m in self.connector.config.modems_for(self.user_mxid)}
            if values.get("modem") not in allowed:
                raise UserInputError(f"Choose one of your modems: {', '.join(sorted(allowed))}.")
            metadata.update(modem=values["modem"])
        backend = self.connector.make_backend(metadata, secret_values)
        await backend.check()
        name = f"{ids.display_name(number)} ({LABELS[self.flow_id]})"
        return LoginStep(StepType.COMPLETE, f"sms.{self.flow_id}.complete", result=LoginResult(
            remote_id=ids.login_remote_id(self.flow_id, number), remote_name=name, metadata=metadata,
            secrets=secret_values))

    async def wait(self) -> LoginStep:
        raise UserInputError("This login does not wait for anything.")

    async def cancel(self) -> None:
        return None
