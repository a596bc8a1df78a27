"""Email end to end: the session's Synapse, bridges and mail servers (Dovecot and Postfix), and a
decrypting client.

Mail delivered to the mailbox appears decrypted in its room (HTML sanitised, attachments
byte-identical, replies in the thread); a reply typed in the thread goes out with threading
headers and an attachment, and is filed in Sent; a refused recipient and a wrong password get
plain errors; an IMAP connection dropped in the middle of a FETCH reconnects and loses nothing;
the login works by chat with the bridge bot too; mail read and sent with another client shows
as the user's own with double puppeting, and from a "(you)" ghost without it. Each test has its own mailboxes and Matrix
users; the round trip runs on the SQLite and the PostgreSQL bridge.
"""

from __future__ import annotations

import asyncio
import datetime as dt
import secrets
from email.message import EmailMessage
from email.utils import format_datetime, make_msgid
from typing import Any

from tests.conftest import unique
from tests.email.e2e import EmailLogins, body_has, msgtype_is, room_named, thread_of
from tests.email.tcpproxy import TcpProxy
from tests.rig.bridge import BridgeProcess
from tests.rig.mailservers import MailServers, simple_message

PDF = b"%PDF-1.4\n" + bytes(range(256)) * 64 + b"\n%%EOF\n"
PNG = bytes.fromhex(
    "89504e470d0a1a0a0000000d4948445200000001000000010806000000"
    "1f15c4890000000d49444154789c6360f8cfc0000003010100c9fe92ef0000000049454e44ae426082"
)


def rich_mail(me: str, sender: str, message_id: str) -> bytes:
    msg = EmailMessage()
    msg["From"] = f"Alice Example <{sender}>"
    msg["To"] = me
    msg["Subject"] = "Holiday photos"
    msg["Date"] = format_datetime(dt.datetime.now(dt.timezone.utc))
    msg["Message-ID"] = message_id
    msg.set_content("Hello from Alice!\nThe plan is attached.\n")
    msg.add_alternative(
        "<p>Hello from <b>Alice</b>!</p><script>alert(1)</script>"
        "<img src=x onerror=\"alert(2)\"><a href=\"javascript:alert(3)\">click</a>"
        "<p>The plan is attached.</p>", subtype="html")
    msg.add_attachment(PDF, maintype="application", subtype="pdf", filename="plan.pdf")
    msg.add_attachment(PNG, maintype="image", subtype="png", filename="dot.png")
    return msg.as_bytes()


async def test_mail_in_reply_out(any_bridge: BridgeProcess, nio_users: Any, email_logins: EmailLogins,
                                 mailservers: MailServers) -> None:
    bridge = any_bridge
    me = mailservers.add_user(unique("e2e"))
    alice_addr = f"{unique('alice')}@friends.example"
    user = await nio_users("alice")
    await email_logins.login(bridge, user.user_id, me, display_name="Me Myself")

    root_id = make_msgid(domain="friends.example")
    await asyncio.to_thread(mailservers.deliver, rich_mail(me, alice_addr, root_id), me)
    room = await user.wait_for_invite(room_named("Alice Example"), timeout=60)
    text = await user.wait_for_message(room, body_has("Hello from Alice!"), timeout=60)
    raw = await user.get_raw_event(room, text["event_id"])
    assert raw["type"] == "m.room.encrypted"
    assert raw["sender"].startswith(f"@{bridge.config['networks']['email']['ghost_prefix']}")
    content = text["content"]
    html = content.get("formatted_body", "")
    assert "<b>Alice</b>" in html
    for bad in ("<script", "onerror", "javascript:", "alert("):
        assert bad not in html
    assert "org.caliopen.privacy" in content
    pdf = await user.wait_for_message(room, msgtype_is("m.file"), timeout=60)
    assert pdf["content"]["body"] == "plan.pdf" and await user.download_decrypted(pdf["content"]) == PDF
    image = await user.wait_for_message(room, msgtype_is("m.image"), timeout=60)
    assert await user.download_decrypted(image["content"]) == PNG

    # Alice answers herself: her mail lands in the thread of the first.
    second = simple_message(from_addr=f"Alice Example <{alice_addr}>", to=me, subject="Re: Holiday photos",
                            body="Second thoughts: the beach.\n", message_id=make_msgid(domain="friends.example"),
                            in_reply_to=root_id, references=[root_id])
    await asyncio.to_thread(mailservers.deliver, second, me)
    answer = await user.wait_for_message(room, body_has("Second thoughts"), timeout=60)
    assert thread_of(answer) == text["event_id"]

    # A reply typed in the thread goes out as a reply in that email thread.
    await user.send_text(room, "Lovely, see you there!", thread_root=text["event_id"], reply_to=answer["event_id"])
    (out,) = await mailservers.sink.wait_for(alice_addr, timeout=60)
    mail = out.message
    assert mail["Subject"] == "Re: Holiday photos"
    assert mail["In-Reply-To"] == second.split(b"Message-ID: ")[1].split(b"\n")[0].decode().strip()
    assert root_id in mail["References"]
    assert mail["From"].addresses[0].addr_spec == me and mail["From"].addresses[0].display_name == "Me Myself"
    assert "Lovely, see you there!" in mail.get_body(("plain",)).get_content()
    sent = await mailservers.wait_for_mail(me, "Sent", timeout=60)
    assert any(mail["Message-ID"].encode() in r for _, _, r in sent)

    # A file sent from Matrix is an attachment, byte for byte.
    data = bytes(reversed(PDF))
    await user.send_file(room, data, "minutes.pdf", "application/pdf")
    (_, with_file) = await mailservers.sink.wait_for(alice_addr, count=2, timeout=60)
    (att,) = list(with_file.message.iter_attachments())
    assert att.get_filename() == "minutes.pdf" and att.get_content() == data

    # Nothing was bridged twice (the copies in Sent are the Matrix messages themselves): a
    # later mail arrives after where a duplicate would be, and there is none.
    await asyncio.to_thread(mailservers.deliver, simple_message(
        from_addr=f"Alice Example <{alice_addr}>", to=me, subject="Re: Holiday photos", body="Last word.\n",
        message_id=make_msgid(domain="friends.example"), in_reply_to=root_id, references=[root_id]), me)
    await user.wait_for_message(room, body_has("Last word."), timeout=60)
    await asyncio.sleep(2)
    bodies = [str(e.get("content", {}).get("body", "")) for e in user.events(room)]
    assert sum("Lovely, see you there!" in b for b in bodies) == 1
    assert sum("Hello from Alice!" in b for b in bodies) == 1


async def test_refused_recipient_shows_an_error_in_the_room(bridge: BridgeProcess, nio_users: Any,
                                                            email_logins: EmailLogins,
                                                            mailservers: MailServers) -> None:
    me = mailservers.add_user(unique("e2e"))
    zoe = f"reject-{unique('zoe')}@friends.example"
    user = await nio_users("bob")
    login_id = await email_logins.login(bridge, user.user_id, me)
    status, created = await bridge.provision("POST", f"/create_dm/{zoe}?login_id={login_id}", user.user_id)
    assert status == 200, created
    room = await user.wait_for_invite(room_named(zoe), timeout=60)
    await user.send_text(room, "Are you there?")
    notice = await user.wait_for_message(room, body_has("was not sent"), timeout=60)
    assert zoe in notice["content"]["body"]
    assert await asyncio.to_thread(mailservers.fetch_all, me, "Sent") == []


async def test_wrong_password_is_refused_plainly(bridge: BridgeProcess, nio_users: Any, email_logins: EmailLogins,
                                                 mailservers: MailServers) -> None:
    me = mailservers.add_user(unique("e2e"))
    wrong = f"wrong-password-{secrets.token_hex(6)}"
    user = await nio_users("carl")
    email_logins.track(bridge, user.user_id)
    status, step = await bridge.provision("POST", "/login/start/email.password", user.user_id)
    assert status == 200
    status, error = await bridge.provision(
        "POST", f"/login/step/{step['login_id']}/{step['step_id']}/user_input", user.user_id,
        json=email_logins.values(me, password=wrong))
    assert status == 400 and "refused the username or password" in error["error"]
    assert wrong not in bridge.log_text()
    status, who = await bridge.provision("GET", "/whoami", user.user_id)
    assert status == 200 and who["logins"] == []


async def test_imap_drop_mid_fetch_reconnects_and_loses_nothing(bridge: BridgeProcess, nio_users: Any,
                                                                email_logins: EmailLogins,
                                                                mailservers: MailServers) -> None:
    me = mailservers.add_user(unique("e2e"))
    proxy = TcpProxy(mailservers.host, mailservers.imap_port)
    await proxy.start()
    try:
        user = await nio_users("dora")
        login_id = await email_logins.login(bridge, user.user_id, me, imap_port=str(proxy.port),
                                            imap_security="plain")
        await email_logins.wait_state(bridge, user.user_id, login_id, "CONNECTED")
        # A large mail whose FETCH the connection drops in the middle of.
        token = unique("big")
        body = f"{token}\n" + "".join(f"line {i} of a long report\n" for i in range(30_000))
        big = simple_message(from_addr="Reporter <reporter@friends.example>", to=me, subject="Report", body=body)
        proxy.cut_after_bytes(200_000)
        await asyncio.to_thread(mailservers.deliver, big, me)
        await email_logins.wait_state(bridge, user.user_id, login_id, "TRANSIENT_DISCONNECT", timeout=60)
        proxy.cut_after = None
        state = await email_logins.wait_state(bridge, user.user_id, login_id, "CONNECTED", timeout=60)
        assert state["error"] is None
        room = await user.wait_for_invite(room_named("Reporter"), timeout=60)
        await user.wait_for_message(room, body_has(token), timeout=60)
        # A later mail comes after where a second copy of the big one would be.
        after = unique("after")
        await asyncio.to_thread(mailservers.deliver, simple_message(
            from_addr="Reporter <reporter@friends.example>", to=me, subject="Report", body=f"{after}\n"), me)
        await user.wait_for_message(room, body_has(after), timeout=60)
        await asyncio.sleep(2)
        assert sum(body_has(token)(e) for e in user.events(room)) == 1
        assert proxy.cuts >= 1
    finally:
        await email_logins.logout_all()  # before its IMAP server goes away
        await proxy.stop()


async def test_login_by_chat(bridge: BridgeProcess, nio_users: Any, email_logins: EmailLogins,
                             mailservers: MailServers) -> None:
    me = mailservers.add_user(unique("chat"))
    user = await nio_users("erin")
    email_logins.track(bridge, user.user_id)
    mgmt = await user.create_dm(bridge.bot_mxid)
    await user.wait_for_message(mgmt, body_has("management room"), timeout=60)
    await user.send_text(mgmt, "login email")
    answers = email_logins.values(me, display_name="Erin E.", username="-", save_sent="-")
    secret_event = None
    for field in ("email address", "display name", "IMAP server", "IMAP port", "IMAP security", "SMTP server",
                  "SMTP port", "SMTP security", "username", "choice for copies in Sent", "password"):
        await user.wait_for_message(mgmt, body_has(f"Send your {field}"), timeout=60)
        key = {"email address": "email", "display name": "display_name", "IMAP server": "imap_host",
               "IMAP port": "imap_port", "IMAP security": "imap_security", "SMTP server": "smtp_host",
               "SMTP port": "smtp_port", "SMTP security": "smtp_security", "username": "username",
               "choice for copies in Sent": "save_sent", "password": "password"}[field]
        event = await user.send_text(mgmt, answers[key])
        if key == "password":
            secret_event = event
    await user.wait_for_message(mgmt, body_has(f"Logged in to email as {me}"), timeout=60)
    assert secret_event is not None
    raw = await user.get_raw_event(mgmt, secret_event)
    assert raw.get("unsigned", {}).get("redacted_because") or not raw.get("content"), raw
    assert mailservers.password(me) not in bridge.log_text()
    await user.send_text(mgmt, "logins")
    await user.wait_for_message(mgmt, lambda e: me in str(e.get("content", {}).get("body", ""))
                                and "CONNECTED" in str(e.get("content", {}).get("body", "")), timeout=60)


async def test_mail_sent_and_read_with_another_client(any_bridge: BridgeProcess, nio_users: Any,
                                                      email_logins: EmailLogins, mailservers: MailServers) -> None:
    """Mail the user sent with another client (found in Sent) and mail they read there
    (``\\Seen``): with double puppeting (the PostgreSQL session bridge) they show as the user's
    own message and own read receipt; without it (the SQLite one) the message comes from a
    ghost of the user's address marked "(you)" and no receipt is made up."""
    bridge = any_bridge
    puppeting = bool(bridge.config["homeserver"].get("double_puppet_as_token"))
    me = mailservers.add_user(unique("other"))
    bob_addr = f"{unique('bob')}@friends.example"
    user = await nio_users("other")
    await email_logins.login(bridge, user.user_id, me)

    first_id = make_msgid(domain="friends.example")
    await asyncio.to_thread(mailservers.deliver, simple_message(
        from_addr=f"Bob Example <{bob_addr}>", to=me, subject="Lunch?", body="Lunch on Friday?\n",
        message_id=first_id), me)
    room = await user.wait_for_invite(room_named("Bob Example"), timeout=60)
    bobs = await user.wait_for_message(room, body_has("Lunch on Friday?"), timeout=60)

    # The user reads Bob's mail with their phone's mail app...
    with mailservers.imap(me) as imap:
        imap.select_folder("INBOX")
        imap.add_flags(imap.search(["HEADER", "Message-ID", first_id]), [b"\\Seen"])
    if puppeting:
        await user.wait_for_receipt(room, user.user_id, bobs["event_id"], timeout=60)
    else:
        # Bob's next mail is bridged after the flag change was seen (same folder, in order):
        # still no receipt as the user.
        await asyncio.to_thread(mailservers.deliver, simple_message(
            from_addr=f"Bob Example <{bob_addr}>", to=me, subject="Re: Lunch?", body="Or Saturday.\n",
            message_id=make_msgid(domain="friends.example")), me)
        await user.wait_for_message(room, body_has("Or Saturday."), timeout=60)
        await asyncio.sleep(2)
        assert user.read_receipt(room, user.user_id) != bobs["event_id"]

    # ...and answers from there: the answer sits in Sent.
    answer = simple_message(from_addr=me, to=bob_addr, subject="Re: Lunch?", body="Friday suits me.\n",
                            message_id=make_msgid(domain="example.org"), in_reply_to=first_id,
                            references=[first_id])
    await asyncio.to_thread(mailservers.append, me, "Sent", answer, ("\\Seen",))
    mine = await user.wait_for_message(room, body_has("Friday suits me."), timeout=60)
    assert mine["content"].get("org.caliopen.from_me") is True
    raw = await user.get_raw_event(room, mine["event_id"])
    assert raw["type"] == "m.room.encrypted"
    if puppeting:
        assert mine["sender"] == user.user_id
    else:
        assert mine["sender"] != user.user_id
        profile = await user._raw("GET", f"/_matrix/client/v3/profile/{mine['sender']}")
        assert "(you)" in profile["displayname"]
