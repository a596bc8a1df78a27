"""SMTP submission for the email bridge (aiosmtplib): check a login, send one message.

Protocol code only: it knows aiosmtplib, :mod:`bridges.email.imap`'s connection settings and
:mod:`bridges.core.errors`, nothing of the bridge. Each call opens a connection (implicit TLS,
STARTTLS, or plain to this machine when allowed), authenticates, and closes it.

Every failure becomes a :class:`bridges.core.errors.SendError` whose message a person
understands, ``retryable`` when trying again later may work (server unreachable, 4xx answers);
:meth:`SmtpSubmission.check_login` raises :class:`bridges.core.errors.LoginError` instead.
Nothing here logs a message body or a password.
"""

from __future__ import annotations

import logging
import ssl
from collections.abc import Sequence

import aiosmtplib
from aiosmtplib import errors as smtp_errors

from ..core.errors import LoginError, SendError
from .imap import AuthenticationFailed, Security, ServerSettings, ServerUnreachable, describe_connect_error

log = logging.getLogger("caliopen.email.smtp")


def human_size(size: int) -> str:
    """``532 bytes``, ``49 KB``, ``1.2 MB``. Pure."""
    if size < 1024:
        return f"{size} bytes"
    if size < 1024 * 1024:
        return f"{size // 1024} KB"
    return f"{size / (1024 * 1024):.1f} MB"


def _server_text(message: str) -> str:
    text = " ".join(str(message).split())
    return text[:300]


class SmtpSubmission:
    """Sends through one submission server. Made with no I/O."""

    def __init__(self, settings: ServerSettings, *, local_hostname: str | None = None) -> None:
        self.settings = settings
        self.local_hostname = local_hostname

    def _where(self) -> str:
        return f"{self.settings.host}:{self.settings.port}"

    def _auth_message(self) -> str:
        return (
            f"The outgoing mail server {self.settings.host} refused the username or password for "
            f"{self.settings.username}. If your provider uses app passwords, create one and use it."
        )

    async def _open(self) -> aiosmtplib.SMTP:
        """Connect, secure and authenticate. Raises ServerUnreachable, AuthenticationFailed
        or LoginError (plaintext refused, no STARTTLS, no AUTH offered)."""
        s = self.settings
        s.check_security("SMTP")
        smtp = aiosmtplib.SMTP(
            hostname=s.host,
            port=s.port,
            use_tls=s.security == Security.TLS,
            start_tls=s.security == Security.STARTTLS,
            tls_context=s.tls_context() if s.security != Security.PLAIN else None,
            timeout=s.timeout,
            local_hostname=self.local_hostname,
        )
        try:
            await smtp.connect()
            if not smtp.esmtp_extensions:  # after STARTTLS the server's EHLO answer is forgotten
                await smtp.ehlo()
        except smtp_errors.SMTPException as e:
            if "STARTTLS" not in str(e):
                raise ServerUnreachable(describe_connect_error("outgoing mail (SMTP)", s, _root(e))) from e
            raise LoginError(
                f"The outgoing mail server {self._where()} does not offer STARTTLS: choose TLS "
                "(usually port 465) instead."
            ) from e
        except OSError as e:
            raise ServerUnreachable(describe_connect_error("outgoing mail (SMTP)", s, _root(e))) from e
        try:
            if not smtp.supports_extension("auth"):
                raise LoginError(
                    f"The outgoing mail server {self._where()} does not offer to log in here: "
                    "check the port (submission is usually 587 with STARTTLS or 465 with TLS)."
                )
            try:
                await smtp.login(s.username, s.password)
            except smtp_errors.SMTPAuthenticationError as e:
                raise AuthenticationFailed(self._auth_message()) from e
            except smtp_errors.SMTPException as e:
                if isinstance(e, smtp_errors.SMTPResponseException) and 500 <= e.code < 600:
                    raise AuthenticationFailed(self._auth_message()) from e
                raise ServerUnreachable(describe_connect_error("outgoing mail (SMTP)", s, _root(e))) from e
        except BaseException:
            smtp.close()
            raise
        return smtp

    async def check_login(self) -> None:
        """Connect and authenticate, then quit. Raises LoginError (or a subclass) saying why."""
        smtp = await self._open()
        await _quit(smtp)

    async def send(self, raw: bytes, *, sender: str, recipients: Sequence[str]) -> str:
        """Send ``raw`` (a whole message, CRLF line ends) to ``recipients``; all or nothing.

        Every recipient is offered before the message: if the server refuses any, nothing is
        sent and the SendError names them. Returns the server's final answer (with its queue ID).
        """
        if not recipients:
            raise SendError("This message has no recipient.")
        try:
            smtp = await self._open()
        except AuthenticationFailed as e:
            raise SendError(e.user_message + " Log in again with `login email`.") from e
        except ServerUnreachable as e:
            raise SendError(e.user_message + " The bridge will try again.", retryable=True) from e
        except LoginError as e:
            raise SendError(e.user_message) from e
        try:
            return await self._transaction(smtp, raw, sender, list(recipients))
        except smtp_errors.SMTPServerDisconnected as e:
            raise SendError(
                f"The outgoing mail server {self._where()} closed the connection while sending. "
                "The bridge will try again.",
                retryable=True,
            ) from e
        except (smtp_errors.SMTPTimeoutError, TimeoutError) as e:
            raise SendError(
                f"The outgoing mail server {self._where()} did not answer in time. The bridge will try again.",
                retryable=True,
            ) from e
        except OSError as e:
            raise SendError(
                f"The connection to the outgoing mail server {self._where()} broke ({type(e).__name__}). "
                "The bridge will try again.",
                retryable=True,
            ) from e
        finally:
            await _quit(smtp)

    async def _transaction(self, smtp: aiosmtplib.SMTP, raw: bytes, sender: str, recipients: list[str]) -> str:
        everyone = [sender, *recipients]
        utf8 = not all(a.isascii() for a in everyone)
        options: list[str] = []
        if utf8:
            if not smtp.supports_extension("smtputf8"):
                raise SendError(
                    f"The outgoing mail server {self.settings.host} cannot send to or from addresses "
                    "with non-ASCII characters."
                )
            options.append("SMTPUTF8")
        if not raw.isascii() and smtp.supports_extension("8bitmime"):
            options.append("BODY=8BITMIME")
        limit = _size_limit(smtp)
        if limit and len(raw) > limit:
            raise SendError(self._too_large(len(raw), limit))
        if smtp.supports_extension("size"):
            options.append(f"SIZE={len(raw)}")
        encoding = "utf-8" if utf8 else "ascii"
        try:
            await smtp.mail(sender, options=options, encoding=encoding)
        except smtp_errors.SMTPSenderRefused as e:
            raise self._refusal(e.code, e.message, f"the sender address {sender}", len(raw), limit) from e
        refused: list[tuple[str, int, str]] = []
        for rcpt in recipients:
            try:
                await smtp.rcpt(rcpt, encoding=encoding)
            except smtp_errors.SMTPRecipientRefused as e:
                refused.append((rcpt, e.code, e.message))
        if refused:
            await _reset(smtp)
            names = ", ".join(r for r, _, _ in refused)
            first = refused[0]
            retryable = all(400 <= code < 500 for _, code, _ in refused)
            what = "did not accept" if retryable else "refused"
            raise SendError(
                f"Not sent: the mail server {what} {names} ({first[1]} {_server_text(first[2])})."
                + (" The bridge will try again." if retryable else ""),
                retryable=retryable,
            )
        try:
            response = await smtp.data(raw)
        except smtp_errors.SMTPDataError as e:
            raise self._refusal(e.code, e.message, "the message", len(raw), limit) from e
        log.debug("Submitted a message of %d bytes to %d recipient(s) via %s", len(raw), len(recipients),
                  self.settings.host)
        return _server_text(response.message)

    def _too_large(self, size: int, limit: int | None) -> str:
        text = f"The message is too large for the outgoing mail server ({human_size(size)}"
        return text + (f", its limit is {human_size(limit)})." if limit else ").")

    def _refusal(self, code: int, message: str, what: str, size: int, limit: int | None) -> SendError:
        text = _server_text(message)
        if code == 552 or "5.3.4" in text or "too big" in text.lower() or "size" in text.lower() and code >= 500:
            return SendError(self._too_large(size, limit))
        if 400 <= code < 500:
            return SendError(
                f"The mail server did not accept {what} for now ({code} {text}). The bridge will try again.",
                retryable=True,
            )
        return SendError(f"Not sent: the mail server refused {what} ({code} {text}).")


def _size_limit(smtp: aiosmtplib.SMTP) -> int | None:
    value = smtp.esmtp_extensions.get("size", "")
    try:
        limit = int(str(value).strip() or 0)
    except ValueError:
        return None
    return limit or None


def _root(exc: BaseException) -> BaseException:
    """The innermost cause (aiosmtplib wraps socket and TLS errors)."""
    seen = set()
    while exc.__cause__ is not None and id(exc) not in seen:
        seen.add(id(exc))
        exc = exc.__cause__
    if isinstance(exc, smtp_errors.SMTPConnectTimeoutError):
        return TimeoutError()
    if isinstance(exc, smtp_errors.SMTPConnectError) and "refused" in str(exc).lower():
        return ConnectionRefusedError()
    if isinstance(exc, smtp_errors.SMTPConnectError) and "certificate verify failed" in str(exc).lower():
        err = ssl.SSLCertVerificationError()
        err.verify_message = "certificate verify failed"
        return err
    return exc


async def _reset(smtp: aiosmtplib.SMTP) -> None:
    try:
        await smtp.rset()
    except (smtp_errors.SMTPException, OSError):
        pass


async def _quit(smtp: aiosmtplib.SMTP) -> None:
    try:
        if smtp.is_connected:
            await smtp.quit()
    except (smtp_errors.SMTPException, OSError):
        smtp.close()
