"""Logging in to a mailbox: the "password" flow, and the account it makes.

One step asks for the address, display name, IMAP and SMTP servers, username, whether mail
sent from Matrix is filed in Sent (blank: the bridge's ``save_sent``) and password (an app
password, for most providers). Both servers are checked (IMAP login and the Sent
folder, SMTP login) before the step completes; a failure raises
:class:`bridges.core.errors.LoginError` with the reason, and the flow can be tried again.

The :class:`Account` is what a saved login holds: everything but the password goes in the
login's metadata, the password in its secrets (encrypted by the core). OAuth2 (XOAUTH2) would be
another flow producing the same account with a token secret instead of a password.

Capabilities: none (the login flow is part of the required interface).
"""

from __future__ import annotations

import dataclasses
import logging
from dataclasses import dataclass, field
from typing import Any

from ..core.errors import LoginError, UserInputError
from ..core.network import FieldType, LoginField, LoginResult, LoginStep, StepType, UserLoginInfo
from .config import EmailConfig, SaveSent
from .ids import normalize_address
from .imap import ImapConnection, Security, ServerSettings
from .smtp import SmtpSubmission

log = logging.getLogger("caliopen.email.login")

FLOW_ID = "password"
STEP_ID = "email.settings"
SECURITY_CHOICES = tuple(s.value for s in Security)
SAVE_SENT_CHOICES = tuple(s.value for s in SaveSent)
DEFAULT_PORTS = {
    "imap": {Security.TLS: 993, Security.STARTTLS: 143, Security.PLAIN: 143},
    "smtp": {Security.TLS: 465, Security.STARTTLS: 587, Security.PLAIN: 587},
}

#: Keys of the login metadata that describe the account (the sync adds its cursors beside them).
ACCOUNT_KEYS = (
    "email", "display_name", "imap_host", "imap_port", "imap_security", "smtp_host", "smtp_port",
    "smtp_security", "username", "sent_folder", "save_sent",
)


@dataclass(frozen=True)
class Account:
    """A mailbox: the address it sends as, its two servers, and the password."""

    email: str
    display_name: str | None
    imap_host: str
    imap_port: int
    imap_security: Security
    smtp_host: str
    smtp_port: int
    smtp_security: Security
    username: str
    password: str = field(repr=False)
    sent_folder: str | None = None
    #: This login's choice of filing sent mail; None follows the bridge's ``save_sent``.
    save_sent: SaveSent | None = None

    @property
    def domain(self) -> str:
        return self.email.rpartition("@")[2]

    def imap_settings(self, config: EmailConfig) -> ServerSettings:
        return ServerSettings(
            self.imap_host, self.imap_port, self.imap_security, self.username, self.password,
            ssl_context=config.ssl_context(), timeout=config.timeout,
            allow_plaintext_loopback=config.allow_plaintext_loopback,
        )

    def smtp_settings(self, config: EmailConfig) -> ServerSettings:
        return ServerSettings(
            self.smtp_host, self.smtp_port, self.smtp_security, self.username, self.password,
            ssl_context=config.ssl_context(), timeout=config.timeout,
            allow_plaintext_loopback=config.allow_plaintext_loopback,
        )

    def metadata(self) -> dict[str, Any]:
        return {
            "email": self.email, "display_name": self.display_name,
            "imap_host": self.imap_host, "imap_port": self.imap_port, "imap_security": self.imap_security.value,
            "smtp_host": self.smtp_host, "smtp_port": self.smtp_port, "smtp_security": self.smtp_security.value,
            "username": self.username, "sent_folder": self.sent_folder,
            "save_sent": self.save_sent.value if self.save_sent else None,
        }

    @classmethod
    def from_login(cls, login: UserLoginInfo) -> Account:
        """The account of a saved login. No I/O."""
        m = login.metadata
        return cls(
            email=str(m.get("email") or login.remote_id),
            display_name=m.get("display_name") or None,
            imap_host=str(m["imap_host"]), imap_port=int(m["imap_port"]), imap_security=Security(m["imap_security"]),
            smtp_host=str(m["smtp_host"]), smtp_port=int(m["smtp_port"]), smtp_security=Security(m["smtp_security"]),
            username=str(m.get("username") or login.remote_id),
            password=str(login.secrets.get("password", "")),
            sent_folder=m.get("sent_folder") or None,
            save_sent=_saved_save_sent(m.get("save_sent")),
        )

    @classmethod
    def from_input(cls, values: dict[str, str]) -> Account:
        """Read the login form (blank fields take their defaults). Raises UserInputError."""
        email = normalize_address(values.get("email", ""))
        domain = email.rpartition("@")[2]
        imap_security = _security(values.get("imap_security"), Security.TLS, "IMAP security")
        smtp_security = _security(values.get("smtp_security"), Security.STARTTLS, "SMTP security")
        password = values.get("password") or ""
        if not password:
            raise UserInputError("The password is missing.")
        return cls(
            email=email,
            display_name=" ".join((values.get("display_name") or "").split()) or None,
            imap_host=_host(values.get("imap_host"), f"imap.{domain}", "IMAP server"),
            imap_port=_port(values.get("imap_port"), DEFAULT_PORTS["imap"][imap_security], "IMAP port"),
            imap_security=imap_security,
            smtp_host=_host(values.get("smtp_host"), f"smtp.{domain}", "SMTP server"),
            smtp_port=_port(values.get("smtp_port"), DEFAULT_PORTS["smtp"][smtp_security], "SMTP port"),
            smtp_security=smtp_security,
            username=(values.get("username") or "").strip() or email,
            password=password,
            save_sent=_save_sent(values.get("save_sent")),
        )


def _security(value: str | None, default: Security, what: str) -> Security:
    text = (value or "").strip().lower().replace("ssl", "tls").replace("none", "plain")
    if not text:
        return default
    try:
        return Security(text)
    except ValueError:
        raise UserInputError(f"{what} must be one of {', '.join(SECURITY_CHOICES)}, not '{value}'.") from None


def _save_sent(value: str | None) -> SaveSent | None:
    text = (value or "").strip()
    if not text:
        return None
    try:
        return SaveSent.parse(text)
    except ValueError:
        raise UserInputError(
            f"Filing sent mail must be one of {', '.join(SAVE_SENT_CHOICES)} (or empty), not '{value}'."
        ) from None


def _saved_save_sent(value: Any) -> SaveSent | None:
    try:
        return SaveSent.parse(value) if value not in (None, "") else None
    except ValueError:
        log.warning("A login's saved save_sent is not one of %s; the bridge's setting applies",
                    ", ".join(SAVE_SENT_CHOICES))
        return None


def _host(value: str | None, default: str, what: str) -> str:
    host = (value or "").strip().rstrip(".").lower()
    if not host:
        return default
    if any(c.isspace() for c in host) or "/" in host or "@" in host:
        raise UserInputError(f"'{value}' is not a server name for the {what}.")
    return host


def _port(value: str | None, default: int, what: str) -> int:
    text = (value or "").strip()
    if not text:
        return default
    if not text.isdigit() or not 0 < int(text) < 65536:
        raise UserInputError(f"The {what} must be a number from 1 to 65535, not '{value}'.")
    return int(text)


def login_fields(save_sent_default: SaveSent = SaveSent.AUTO) -> tuple[LoginField, ...]:
    """The fields of the login form; ``save_sent_default`` is the bridge's setting. Pure."""
    return (
        LoginField("email", "email address", FieldType.EMAIL, "the address you send as, e.g. alice@example.org"),
        LoginField("display_name", "display name", FieldType.TEXT, "the name people see on your mail",
                   optional=True),
        LoginField("imap_host", "IMAP server", FieldType.DOMAIN, "empty for imap.<your domain>", optional=True),
        LoginField("imap_port", "IMAP port", FieldType.TEXT, "empty for 993 with TLS, 143 with STARTTLS",
                   optional=True),
        LoginField("imap_security", "IMAP security", FieldType.SELECT, default=Security.TLS.value,
                   options=SECURITY_CHOICES, optional=True),
        LoginField("smtp_host", "SMTP server", FieldType.DOMAIN, "empty for smtp.<your domain>", optional=True),
        LoginField("smtp_port", "SMTP port", FieldType.TEXT, "empty for 587 with STARTTLS, 465 with TLS",
                   optional=True),
        LoginField("smtp_security", "SMTP security", FieldType.SELECT, default=Security.STARTTLS.value,
                   options=SECURITY_CHOICES, optional=True),
        LoginField("username", "username", FieldType.USERNAME, "empty when it is your email address",
                   optional=True),
        LoginField("save_sent", "choice for copies in Sent", FieldType.SELECT,
                   "whether mail sent from Matrix is filed in your Sent folder: auto skips servers "
                   "that file it themselves, such as Gmail, and mail Sent already holds; empty for "
                   f"this bridge's setting ({save_sent_default.value})",
                   options=SAVE_SENT_CHOICES, optional=True),
        LoginField("password", "password", FieldType.PASSWORD, "an app password if your provider has them"),
    )


async def check_account(account: Account, config: EmailConfig) -> Account:
    """Log in to both servers; return the account with its Sent folder found.

    Raises LoginError (AuthenticationFailed, ServerUnreachable) naming the server at fault.
    """
    imap = ImapConnection(account.imap_settings(config), name="email-login")
    try:
        await imap.connect()
        sent = await imap.find_sent_folder()
    finally:
        await imap.close()
    await SmtpSubmission(account.smtp_settings(config), local_hostname=None).check_login()
    return dataclasses.replace(account, sent_folder=sent)


class EmailLogin:
    """The "password" login flow (:class:`bridges.core.network.LoginProcess`)."""

    def __init__(self, config: EmailConfig, user_mxid: str) -> None:
        self.config = config
        self.user_mxid = user_mxid

    async def start(self) -> LoginStep:
        return LoginStep(
            StepType.USER_INPUT, STEP_ID,
            "Connect a mailbox over IMAP and SMTP. Most providers want an app password rather than "
            "your usual one.",
            fields=login_fields(self.config.save_sent),
        )

    async def submit_input(self, values: dict[str, str]) -> LoginStep:
        account = Account.from_input(values)
        try:
            account = await check_account(account, self.config)
        except LoginError:
            raise
        except Exception as e:  # an unexpected failure still gets a plain answer
            log.warning("Checking the mailbox of a login failed", exc_info=True)
            raise LoginError(f"The mail servers could not be checked ({type(e).__name__}).") from e
        result = LoginResult(
            remote_id=account.email,
            remote_name=account.email,
            metadata=account.metadata(),
            secrets={"password": account.password},
        )
        return LoginStep(StepType.COMPLETE, "email.complete", f"Connected {account.email}.", result=result)

    async def wait(self) -> LoginStep:
        raise UserInputError("This login does not wait for anything.")

    async def cancel(self) -> None:
        return None
