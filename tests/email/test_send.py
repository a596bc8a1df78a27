"""Matrix → email (handle_matrix) through the real Postfix, with a recording core."""

from __future__ import annotations

import asyncio
import hashlib
from collections.abc import Sequence
from email import policy
from email.message import EmailMessage
from email.parser import BytesParser

import pytest

from bridges.core.errors import SendError
from bridges.core.events import Media, MatrixMessage, MessageRef, PortalRef
from bridges.email.client import files_sent_itself
from bridges.email.config import SaveSent
from bridges.email.imap import ImapConnection
from bridges.email.smtp import SmtpSubmission
from tests.email.conn_util import logged_in_client, make_connector
from tests.email.util import eventually
from tests.rig.mailservers import MailServers, simple_message


def portal(members: list[str], portal_id: str | None = None) -> PortalRef:
    return PortalRef(portal_id or ",".join(sorted(members)), "L1", None, {"members": members})


def message(p: PortalRef, body: str, **kw: object) -> MatrixMessage:
    return MatrixMessage(event_id=f"$ev-{hashlib.md5(body.encode()).hexdigest()}", portal=p,
                         sender_mxid="@alice:test", msgtype=str(kw.pop("msgtype", "m.text")), body=body,
                         timestamp=1_700_000_000_000, **kw)  # type: ignore[arg-type]


async def connected_client(mailservers: MailServers, me: str, login: dict[str, str] | None = None,
                           **cfg: object):  # type: ignore[no-untyped-def]
    connector, bridge = make_connector(mailservers, **cfg)
    client = await logged_in_client(connector, mailservers, me, display_name="Alice Martin", **(login or {}))
    return client, bridge


async def sent_copies(mailservers: MailServers, me: str, message_id: str) -> list[tuple[int, set[bytes], bytes]]:
    """The mail in ``me``'s Sent folder with this Message-ID."""
    found = await asyncio.to_thread(mailservers.fetch_all, me, "Sent")
    return [m for m in found if f"<{message_id}>".encode() in m[2]]


async def test_new_thread_goes_out_and_is_filed_in_sent(mailservers: MailServers, mail_user: tuple[str, str]) -> None:
    me, _ = mail_user
    client, bridge = await connected_client(mailservers, me)
    await client.connect()
    try:
        await eventually(lambda: _initial_done(bridge))
        p = portal(["bob@send.example"])
        sent = await client.handle_matrix_message(message(
            p, "Dinner on Friday?\nAt eight, **if** you can.", formatted_body="Dinner on Friday?<br>At eight, <b>if</b> you can."))
        (got,) = await mailservers.sink.wait_for("bob@send.example")
        mail = got.message
        assert mail["Message-ID"].strip("<>") == sent.remote_id
        assert mail["Subject"] == "Dinner on Friday?" and mail["To"] == "bob@send.example"
        assert mail["From"].addresses[0].addr_spec == me and mail["From"].addresses[0].display_name == "Alice Martin"
        assert mail["In-Reply-To"] is None and got.mail_from == me
        assert mail.get_content_type() == "multipart/alternative"
        html = mail.get_body(("html",)).get_content()
        assert "<b>if</b>" in html
        assert sent.metadata["folder"] == "Sent" and sent.metadata["message_id"] == sent.remote_id
        ((uid, flags, raw),) = await mailservers.wait_for_mail(me, "Sent")  # once (save_sent auto)
        assert uid == sent.metadata["uid"] and b"\\Seen" in flags and sent.remote_id.encode() in raw
        # The Sent watcher sees the copy but does not bridge it back.
        await asyncio.sleep(1.0)
        assert sent.remote_id not in [e.remote_id for e in bridge.messages()]
    finally:
        await client.disconnect()


async def _initial_done(bridge):  # type: ignore[no-untyped-def]
    return bridge.metadata.get("L1", {}).get("sync", {}).get("initial_done")


async def test_reply_in_a_thread_carries_the_threading_headers(
    mailservers: MailServers, mail_user: tuple[str, str]
) -> None:
    me, _ = mail_user
    client, _ = await connected_client(mailservers, me, save_sent=False)
    p = portal(["carol@send.example", "dan@send.example"], portal_id="group:abc")
    root = MessageRef("root@send.example", {"message_id": "root@send.example", "subject": "Trip to Lyon",
                                           "references": []})
    last = MessageRef("r2@send.example", {"message_id": "r2@send.example", "subject": "RE: Re: Trip to Lyon",
                                         "references": ["root@send.example", "r1@send.example"]})
    sent = await client.handle_matrix_message(message(p, "Count me in.", thread_root=root, reply_to=last))
    got = await mailservers.sink.wait_for("dan@send.example")
    mail = got[0].message
    assert sorted(got[0].rcpt_tos) == ["carol@send.example", "dan@send.example"]
    assert mail["Subject"] == "Re: Trip to Lyon"
    assert mail["In-Reply-To"] == "<r2@send.example>"
    assert mail["References"].split() == ["<root@send.example>", "<r1@send.example>", "<r2@send.example>"]
    assert sent.metadata["references"] == ["root@send.example", "r1@send.example", "r2@send.example"]
    assert "folder" not in sent.metadata  # save_sent off


@pytest.mark.parametrize(("data", "mimetype", "filename"), [
    (bytes(range(256)) * 40, "application/pdf", "plan.pdf"),
    ("Liste :\n- thé\n- café\n".encode("latin-1"), "text/plain", "courses.txt"),
    ("Zoë;Kraków\n€;10\n".encode(), "text/csv", "prix.csv"),
], ids=["pdf", "text-latin1", "text-utf8"])
async def test_attachment_arrives_byte_identical(mailservers: MailServers, mail_user: tuple[str, str],
                                                 data: bytes, mimetype: str, filename: str) -> None:
    me, _ = mail_user
    client, _ = await connected_client(mailservers, me, save_sent=False)
    to = f"erin-{me.partition('@')[0]}@send.example"
    media = Media(data=data, mimetype=mimetype, filename=filename)
    await client.handle_matrix_message(message(portal([to]), filename, msgtype="m.file", media=media))
    (got,) = await mailservers.sink.wait_for(to)
    attachments = list(got.message.iter_attachments())
    assert len(attachments) == 1
    att = attachments[0]
    assert isinstance(att, EmailMessage)
    assert att.get_filename() == filename and att.get_content_type() == mimetype
    assert att.get_payload(decode=True) == data


async def test_refused_recipient_is_a_clear_error(mailservers: MailServers, mail_user: tuple[str, str]) -> None:
    me, _ = mail_user
    client, _ = await connected_client(mailservers, me)
    with pytest.raises(SendError) as err:
        await client.handle_matrix_message(message(portal(["reject-fay@send.example"]), "Hello?"))
    assert not err.value.retryable and "reject-fay@send.example" in err.value.user_message
    assert await asyncio.to_thread(mailservers.fetch_all, me, "Sent") == []
    with pytest.raises(SendError, match="no email address"):
        await client.handle_matrix_message(message(PortalRef("group:0f0f", "L1", None, {}), "Note"))
    await client.disconnect()


async def test_mailing_list_reply_goes_to_the_list(mailservers: MailServers, mail_user: tuple[str, str]) -> None:
    me, _ = mail_user
    client, _ = await connected_client(mailservers, me, save_sent=False)
    p = PortalRef("list:dev.lists.send.example", "L1", "Developers", {"members": ["dev@lists.send.example"]})
    await client.handle_matrix_message(message(p, "+1 for the release"))
    (got,) = await mailservers.sink.wait_for("dev@lists.send.example")
    assert got.message["To"] == "dev@lists.send.example"


async def test_notes_to_self_go_to_the_own_mailbox(mailservers: MailServers, mail_user: tuple[str, str]) -> None:
    me, _ = mail_user
    client, _ = await connected_client(mailservers, me, save_sent=False)
    sent = await client.handle_matrix_message(message(PortalRef("self", "L1", "Notes to self", {}), "Buy milk"))
    (_, _, raw) = (await mailservers.wait_for_mail(me))[0]
    assert sent.remote_id.encode() in raw and b"Buy milk" in raw


async def test_reading_in_matrix_sets_seen(mailservers: MailServers, mail_user: tuple[str, str]) -> None:
    me, _ = mail_user
    uids = [await asyncio.to_thread(mailservers.append, me, "INBOX", simple_message(
        from_addr="gus@send.example", to=me, message_id=f"<read{i}@send.example>")) for i in range(3)]
    client, _ = await connected_client(mailservers, me)
    with mailservers.imap(me) as imap:
        uidvalidity = imap.select_folder("INBOX", readonly=True)[b"UIDVALIDITY"]
    refs = [
        MessageRef("read0@send.example", {"folder": "INBOX", "uidvalidity": uidvalidity, "uid": uids[0]}),
        # a stale UIDVALIDITY: found again by its Message-ID
        MessageRef("read1@send.example", {"folder": "INBOX", "uidvalidity": 1, "uid": 99,
                                         "message_id": "read1@send.example"}),
        MessageRef("sent-from-matrix@send.example", {}),  # nowhere to mark
    ]
    await client.handle_matrix_read(portal(["gus@send.example"]), refs)
    flags = {uid: f for uid, f, _ in await asyncio.to_thread(mailservers.fetch_all, me)}
    assert b"\\Seen" in flags[uids[0]] and b"\\Seen" in flags[uids[1]] and b"\\Seen" not in flags[uids[2]]
    await client.disconnect()


@pytest.fixture
def provider_files_sent(mailservers: MailServers, monkeypatch: pytest.MonkeyPatch) -> list[str]:
    """Make the submission server file what it sends in the sender's Sent folder, as many
    providers do; returns the Message-IDs it filed."""
    filed: list[str] = []
    send = SmtpSubmission.send

    async def send_and_file(self: SmtpSubmission, raw: bytes, *, sender: str, recipients: Sequence[str]) -> str:
        answer = await send(self, raw, sender=sender, recipients=recipients)
        await asyncio.to_thread(mailservers.append, sender, "Sent", raw, ("\\Seen",))
        filed.append(str(BytesParser(policy=policy.default).parsebytes(raw)["Message-ID"]).strip("<>"))
        return answer

    monkeypatch.setattr(SmtpSubmission, "send", send_and_file)
    return filed


async def test_auto_does_not_file_a_second_copy(mailservers: MailServers, mail_user: tuple[str, str],
                                                provider_files_sent: list[str]) -> None:
    me, _ = mail_user
    client, _ = await connected_client(mailservers, me)
    assert client.save_sent == SaveSent.AUTO
    try:
        sent = await client.handle_matrix_message(message(portal(["hal@send.example"]), "Filed by the server"))
        assert provider_files_sent == [sent.remote_id]
        ((uid, _, _),) = await sent_copies(mailservers, me, sent.remote_id)
        # The message points at the server's copy, so reading it in Matrix can mark it.
        assert sent.metadata["folder"] == "Sent" and sent.metadata["uid"] == uid
        assert len(await asyncio.to_thread(mailservers.fetch_all, me, "Sent")) == 1
    finally:
        await client.disconnect()


async def test_always_files_a_copy_whatever_sent_holds(mailservers: MailServers, mail_user: tuple[str, str],
                                                       provider_files_sent: list[str]) -> None:
    me, _ = mail_user
    client, _ = await connected_client(mailservers, me, login={"save_sent": "always"}, save_sent="never")
    assert client.save_sent == SaveSent.ALWAYS  # the login's choice over the bridge's
    try:
        sent = await client.handle_matrix_message(message(portal(["ida@send.example"]), "Two copies"))
        copies = await sent_copies(mailservers, me, sent.remote_id)
        assert len(copies) == 2 and sent.metadata["uid"] == copies[-1][0]
    finally:
        await client.disconnect()


@pytest.mark.parametrize(("login", "bridge_setting"), [({}, False), ({"save_sent": "never"}, "auto")])
async def test_never_files_nothing(mailservers: MailServers, mail_user: tuple[str, str],
                                   login: dict[str, str], bridge_setting: object) -> None:
    me, _ = mail_user
    client, _ = await connected_client(mailservers, me, login=login, save_sent=bridge_setting)
    assert client.save_sent == SaveSent.NEVER
    to = f"jay-{me.partition('@')[0]}@send.example"  # the sink is the session's: one recipient per test
    sent = await client.handle_matrix_message(message(portal([to]), f"Not filed {login}"))
    (got,) = await mailservers.sink.wait_for(to)
    assert str(got.message["Message-ID"]).strip("<>") == sent.remote_id
    assert await asyncio.to_thread(mailservers.fetch_all, me, "Sent") == []
    assert "folder" not in sent.metadata
    await client.disconnect()


def test_servers_that_file_sent_mail_themselves() -> None:
    assert files_sent_itself(frozenset({"IMAP4REV1", "X-GM-EXT-1", "IDLE"}))
    assert not files_sent_itself(frozenset({"IMAP4REV1", "IDLE", "UIDPLUS", "SPECIAL-USE"}))


async def test_auto_leaves_sent_to_gmail(mailservers: MailServers, mail_user: tuple[str, str],
                                         monkeypatch: pytest.MonkeyPatch) -> None:
    """A server announcing Gmail's extensions is left to file the mail itself."""
    me, _ = mail_user
    connect = ImapConnection.connect

    async def connect_as_gmail(self: ImapConnection) -> None:
        await connect(self)
        self.capabilities = self.capabilities | {"X-GM-EXT-1"}

    monkeypatch.setattr(ImapConnection, "connect", connect_as_gmail)
    client, _ = await connected_client(mailservers, me)
    try:
        sent = await client.handle_matrix_message(message(portal(["kay@send.example"]), "Left to the server"))
        await mailservers.sink.wait_for("kay@send.example")
        assert await asyncio.to_thread(mailservers.fetch_all, me, "Sent") == []
        assert "folder" not in sent.metadata
        assert await client.file_sent(b"Subject: x\r\n\r\nx\r\n", "x@send.example", SaveSent.ALWAYS) is not None
        assert len(await asyncio.to_thread(mailservers.fetch_all, me, "Sent")) == 1  # always still files
    finally:
        await client.disconnect()
