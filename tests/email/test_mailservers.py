"""The mail server rig itself: each path the email tests rely on works end to end."""

from __future__ import annotations

import smtplib

import pytest
from imapclient import IMAPClient

from tests.rig.mailservers import MailServerError, MailServers, simple_message


def test_lmtp_delivery_and_append(mailservers: MailServers, mail_user: tuple[str, str]) -> None:
    address, _ = mail_user
    mailservers.deliver(simple_message(from_addr="bob@rig.example", to=address, subject="one"), address)
    uid = mailservers.append(address, "Sent", simple_message(from_addr=address, to="bob@rig.example"))
    inbox = mailservers.fetch_all(address)
    assert len(inbox) == 1 and b"Subject: one" in inbox[0][2]
    assert b"\\Seen" not in inbox[0][1]
    sent = mailservers.fetch_all(address, "Sent")
    assert [s[0] for s in sent] == [uid]


def test_lmtp_refuses_unknown_user(mailservers: MailServers) -> None:
    ghost = f"nobody@{mailservers.domain}"
    with pytest.raises(MailServerError):
        mailservers.deliver(simple_message(from_addr="bob@rig.example", to=ghost), ghost)


def test_imap_tls_ports_and_capabilities(mailservers: MailServers, mail_user: tuple[str, str]) -> None:
    address, password = mail_user
    with IMAPClient(mailservers.host, port=mailservers.imaps_port, ssl=True,
                    ssl_context=mailservers.ssl_context(), timeout=10) as client:
        client.login(address, password)
        caps = set(client.capabilities())
        assert {b"IDLE", b"CONDSTORE", b"QRESYNC", b"SPECIAL-USE", b"UIDPLUS"} <= caps
        sent = [name for flags, _, name in client.list_folders() if b"\\Sent" in flags]
        assert sent == ["Sent"]
    with IMAPClient(mailservers.host, port=mailservers.imap_port, ssl=False, timeout=10) as client:
        assert b"STARTTLS" in client.capabilities()
        client.starttls(mailservers.ssl_context())
        client.login(address, password)


async def test_submission_relays_to_sink_and_delivers_locally(
    mailservers: MailServers, mail_user: tuple[str, str]
) -> None:
    address, password = mail_user
    local = mailservers.add_user("rigpeer")
    with smtplib.SMTP(mailservers.host, mailservers.submission_port, timeout=30) as smtp:
        smtp.starttls(context=mailservers.ssl_context())
        smtp.login(address, password)
        smtp.sendmail(address, ["carol@rig.example", local],
                      simple_message(from_addr=address, to=["carol@rig.example", local], subject="rig"))
    got = await mailservers.sink.wait_for("carol@rig.example")
    assert got[0].mail_from == address and got[0].message["Subject"] == "rig"
    delivered = await mailservers.wait_for_mail(local)
    assert b"Subject: rig" in delivered[0][2]


def test_submission_needs_auth_and_reports_sink_refusal(
    mailservers: MailServers, mail_user: tuple[str, str]
) -> None:
    address, password = mail_user
    with smtplib.SMTP(mailservers.host, mailservers.submission_port, timeout=30) as smtp:
        smtp.starttls(context=mailservers.ssl_context())
        with pytest.raises(smtplib.SMTPRecipientsRefused):
            smtp.sendmail(address, ["carol@rig.example"], b"Subject: x\r\n\r\nx\r\n")
        with pytest.raises(smtplib.SMTPAuthenticationError):
            smtp.login(address, password + "wrong")
        smtp.login(address, password)
        with pytest.raises(smtplib.SMTPRecipientsRefused) as refused:
            smtp.sendmail(address, ["reject-dave@rig.example"], b"Subject: x\r\n\r\nx\r\n")
        code, _ = refused.value.recipients["reject-dave@rig.example"]
        assert code == 550
    assert "reject-dave@rig.example" in mailservers.sink.refused


def test_second_server_without_idle(mailservers_factory) -> None:  # type: ignore[no-untyped-def]
    servers = mailservers_factory(advertise_idle=False)
    address = servers.add_user("noidle")
    with servers.imap(address) as client:
        caps = set(client.capabilities())
        assert b"IDLE" not in caps and b"CONDSTORE" in caps
