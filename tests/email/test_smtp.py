"""bridges.email.smtp against the real Postfix (and its aiosmtpd sink) of tests/rig."""

from __future__ import annotations

import asyncio
import logging
from email.utils import make_msgid

import pytest

from bridges.core.errors import LoginError, SendError
from bridges.email import smtp as smtp_module
from bridges.email.imap import AuthenticationFailed, Security, ServerSettings, ServerUnreachable
from bridges.email.smtp import SmtpSubmission
from tests.email.util import smtp_settings
from tests.rig.mailservers import MailServers, free_port, simple_message


def crlf(raw: bytes) -> bytes:
    return raw.replace(b"\r\n", b"\n").replace(b"\n", b"\r\n")


async def test_check_login_with_starttls_and_tls(mailservers: MailServers, mail_user: tuple[str, str]) -> None:
    address, _ = mail_user
    await SmtpSubmission(smtp_settings(mailservers, address)).check_login()
    tls = ServerSettings(mailservers.host, mailservers.submissions_port, Security.TLS, address,
                         mailservers.password(address), ssl_context=mailservers.ssl_context())
    await SmtpSubmission(tls).check_login()


async def test_wrong_password(mailservers: MailServers, mail_user: tuple[str, str], caplog) -> None:  # type: ignore[no-untyped-def]
    address, password = mail_user
    caplog.set_level(logging.DEBUG)
    sub = SmtpSubmission(smtp_settings(mailservers, address, password="bad-" + password))
    with pytest.raises(AuthenticationFailed) as err:
        await sub.check_login()
    assert "refused the username or password" in err.value.user_message
    with pytest.raises(SendError) as send_err:
        await sub.send(b"Subject: x\r\n\r\nsecret body\r\n", sender=address, recipients=["carol@smtp.example"])
    assert not send_err.value.retryable and "login email" in send_err.value.user_message
    assert "bad-" + password not in caplog.text and "secret body" not in caplog.text


async def test_unreachable_untrusted_and_no_starttls(mailservers: MailServers, mail_user: tuple[str, str]) -> None:
    address, password = mail_user
    closed = SmtpSubmission(ServerSettings("127.0.0.1", free_port(), Security.STARTTLS, address, password, timeout=5))
    with pytest.raises(ServerUnreachable):
        await closed.check_login()
    with pytest.raises(SendError) as err:
        await closed.send(b"Subject: x\r\n\r\nx\r\n", sender=address, recipients=["c@smtp.example"])
    assert err.value.retryable and "try again" in err.value.user_message
    untrusted = SmtpSubmission(ServerSettings(mailservers.host, mailservers.submissions_port, Security.TLS, address,
                                              password, timeout=5))
    with pytest.raises(ServerUnreachable, match="certificate"):
        await untrusted.check_login()
    # The sink offers no STARTTLS.
    sink = SmtpSubmission(ServerSettings(mailservers.host, mailservers.sink.port, Security.STARTTLS, address, password,
                                         ssl_context=mailservers.ssl_context(), timeout=5))
    with pytest.raises(LoginError, match="STARTTLS"):
        await sink.check_login()
    remote = SmtpSubmission(ServerSettings("smtp.smtp.example", 25, Security.PLAIN, address, password,
                                           allow_plaintext_loopback=True))
    with pytest.raises(LoginError, match="only allowed to a server on this machine"):
        await remote.check_login()


async def test_sends_to_sink_and_local_mailbox(mailservers: MailServers, mail_user: tuple[str, str]) -> None:
    address, _ = mail_user
    local = mailservers.add_user("smtplocal")
    mid = make_msgid(domain="mail.test")
    raw = crlf(simple_message(from_addr=address, to=["dora@smtp.example", local], subject="Hi Dora", message_id=mid,
                              body="Grüße aus Paris\n"))
    answer = await SmtpSubmission(smtp_settings(mailservers, address)).send(
        raw, sender=address, recipients=["dora@smtp.example", local])
    assert "queued" in answer.lower()
    (got,) = await mailservers.sink.wait_for("dora@smtp.example")
    assert got.mail_from == address and got.message["Message-ID"] == mid
    assert "Grüße aus Paris" in got.message.get_content()
    (uid, _, delivered) = (await mailservers.wait_for_mail(local))[0]
    assert mid.encode() in delivered


async def test_refused_recipient_sends_nothing(mailservers: MailServers, mail_user: tuple[str, str]) -> None:
    address, _ = mail_user
    sub = SmtpSubmission(smtp_settings(mailservers, address))
    raw = crlf(simple_message(from_addr=address, to=["erin@smtp.example", "reject-frank@smtp.example"]))
    with pytest.raises(SendError) as err:
        await sub.send(raw, sender=address, recipients=["erin@smtp.example", "reject-frank@smtp.example"])
    assert not err.value.retryable
    assert "refused reject-frank@smtp.example" in err.value.user_message and "550" in err.value.user_message
    # A later message to another address gets through; the refused transaction queued nothing.
    await sub.send(crlf(simple_message(from_addr=address, to="gina@smtp.example")), sender=address,
                   recipients=["gina@smtp.example"])
    await mailservers.sink.wait_for("gina@smtp.example")
    await asyncio.sleep(0.5)
    assert mailservers.sink.for_recipient("erin@smtp.example") == []


async def test_deferred_recipient_is_retryable(mailservers: MailServers, mail_user: tuple[str, str]) -> None:
    address, _ = mail_user
    with pytest.raises(SendError) as err:
        await SmtpSubmission(smtp_settings(mailservers, address)).send(
            crlf(simple_message(from_addr=address, to="defer-hal@smtp.example")), sender=address,
            recipients=["defer-hal@smtp.example"])
    assert err.value.retryable and "defer-hal@smtp.example" in err.value.user_message


async def test_too_large(mailservers_factory, monkeypatch) -> None:  # type: ignore[no-untyped-def]
    servers: MailServers = mailservers_factory(message_size_limit=50_000)
    address = servers.add_user("big")
    raw = crlf(simple_message(from_addr=address, to="ivan@smtp.example", body="y" * 80_000))
    sub = SmtpSubmission(smtp_settings(servers, address))
    with pytest.raises(SendError, match="too large") as err:  # refused before sending: EHLO said SIZE 50000
        await sub.send(raw, sender=address, recipients=["ivan@smtp.example"])
    assert not err.value.retryable and "its limit is 48 KB)" in err.value.user_message
    # Without the EHLO check the server itself refuses it (552 at MAIL FROM).
    monkeypatch.setattr(smtp_module, "_size_limit", lambda smtp: None)
    with pytest.raises(SendError, match="too large"):
        await sub.send(raw, sender=address, recipients=["ivan@smtp.example"])
    assert servers.sink.for_recipient("ivan@smtp.example") == []
