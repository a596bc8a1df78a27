"""The email connector's sync (handle_remote) against the real Dovecot, with a recording core."""

from __future__ import annotations

import asyncio
import datetime as dt
import time
from email.utils import make_msgid

import pytest

from bridges.core.events import PortalRef, RemoteEventKind
from bridges.core.network import LoginState
from bridges.email.client import EmailClient
from tests.email.conn_util import logged_in_client, make_connector, reload_client
from tests.email.tcpproxy import TcpProxy
from tests.email.util import eventually
from tests.rig.mailservers import MailServers, simple_message

T0 = dt.datetime(2024, 3, 1, 9, 0, tzinfo=dt.timezone.utc)


def mid(tag: str) -> str:
    return make_msgid(idstring=tag, domain="example.org")


def bare(message_id: str) -> str:
    return message_id.strip("<>")


async def stop(*clients: EmailClient) -> None:
    for c in clients:
        await c.disconnect()


async def test_first_sync_imports_history_in_date_order_then_idles(
    mailservers: MailServers, mail_user: tuple[str, str]
) -> None:
    me, _ = mail_user
    ids = {k: mid(k) for k in ("old", "m1", "m2", "s1", "m3")}
    inbox = [
        ("old", "Alice <alice@example.org>", me, T0 - dt.timedelta(days=9), None),
        ("m1", "Alice <alice@example.org>", me, T0, None),
        ("m2", "Carol <carol@example.org>", f"{me}, dave@example.org", T0 + dt.timedelta(hours=1), None),
        ("m3", "Alice <alice@example.org>", me, T0 + dt.timedelta(hours=3), "s1"),
    ]
    for tag, frm, to, date, parent in inbox:
        refs = [ids["m1"], ids[parent]] if parent else None
        raw = simple_message(from_addr=frm, to=to, subject="Lunch" if tag != "m2" else "Plans", date=date,
                             message_id=ids[tag], in_reply_to=ids[parent] if parent else None, references=refs)
        await asyncio.to_thread(mailservers.append, me, "INBOX", raw, (), date)
    sent = simple_message(from_addr=me, to="alice@example.org", subject="Re: Lunch", date=T0 + dt.timedelta(hours=2),
                          message_id=ids["s1"], in_reply_to=ids["m1"], references=[ids["m1"]])
    await asyncio.to_thread(mailservers.append, me, "Sent", sent, ("\\Seen",), T0 + dt.timedelta(hours=2))

    connector, bridge = make_connector(mailservers, initial_sync_messages=3)
    client = await logged_in_client(connector, mailservers, me)
    await client.connect()
    try:
        events = await bridge.wait_messages(4)
        assert [e.remote_id for e in events] == [bare(ids[k]) for k in ("m1", "m2", "s1", "m3")]
        by = {e.remote_id: e for e in events}
        m1, m2, s1 = by[bare(ids["m1"])], by[bare(ids["m2"])], by[bare(ids["s1"])]
        assert m1.portal_id == "alice@example.org" and s1.portal_id == "alice@example.org"
        assert m2.portal_id == "carol@example.org,dave@example.org"
        assert m1.sender.remote_id == "alice@example.org" and m1.sender.name == "Alice" and not m1.sender.is_from_me
        assert s1.sender.remote_id == me and s1.sender.is_from_me
        assert m1.chat_info is not None and m1.chat_info.is_direct and m1.chat_info.name == "Alice"
        assert m2.chat_info is not None and not m2.chat_info.is_direct
        assert {m.remote_id for m in m2.chat_info.members} == {"carol@example.org", "dave@example.org"}
        assert m1.timestamp == int(T0.timestamp() * 1000)
        assert m1.data["folder"] == "INBOX" and s1.data["folder"] == "Sent" and m1.data["raw"]
        await bridge.wait_state(LoginState.CONNECTED)
        saved = await eventually(lambda: _done(bridge))
        assert saved["folders"]["INBOX"]["last_uid"] == 4 and saved["folders"]["Sent"]["last_uid"] == 1

        # New mail arrives: IDLE brings it within seconds.
        t = time.monotonic()
        new = simple_message(from_addr="erin@example.org", to=me, subject="News", message_id=mid("new"))
        await asyncio.to_thread(mailservers.deliver, new, me)
        events = await bridge.wait_messages(5, timeout=15)
        assert events[-1].portal_id == "erin@example.org" and time.monotonic() - t < 10
        await eventually(lambda: _last_uid(bridge, "INBOX", 5))
        # Nothing was marked read by the sync.
        flags = [f for _, f, _ in await asyncio.to_thread(mailservers.fetch_all, me)]
        assert all(b"\\Seen" not in f for f in flags)
    finally:
        await stop(client)

    # A restart resumes at the cursors: only mail that arrived meanwhile is queued.
    await asyncio.to_thread(mailservers.deliver, simple_message(from_addr="erin@example.org", to=me,
                                                                message_id=mid("later")), me)
    attempts = len(bridge.attempts)
    again = reload_client(connector, bridge, client)
    await again.connect()
    try:
        events = await bridge.wait_messages(6)
        await eventually(lambda: _last_uid(bridge, "INBOX", 6))
        assert bridge.attempts[attempts:] == [events[-1].remote_id]
    finally:
        await stop(again)


@pytest.mark.parametrize(("days", "limit", "expected"), [
    (7, 100, ["r1", "r2", "r3"]),  # only the last week's mail
    (7, 2, ["r2", "r3"]),  # the last two of the last week's mail
    (0, 2, ["o3", "r3"]),  # no age limit: the last two by arrival in the folder
])
async def test_first_sync_window_by_age(mailservers: MailServers, mail_user: tuple[str, str],
                                        days: int, limit: int, expected: list[str]) -> None:
    me, _ = mail_user
    now = dt.datetime.now(dt.timezone.utc).replace(microsecond=0)
    ages = {"r1": 3, "o1": 40, "r2": 2, "o2": 10, "r3": 1, "o3": 30}  # in the folder's (UID) order
    ids = {tag: mid(f"age-{tag}") for tag in ages}
    mails = []
    for tag, age in ages.items():
        when = now - dt.timedelta(days=age)
        mails.append((simple_message(from_addr="max@example.org", to=me, subject=tag, date=when,
                                     message_id=ids[tag]), when))
    assert await asyncio.to_thread(mailservers.append_many, me, "INBOX", mails) == len(mails)
    connector, bridge = make_connector(mailservers, sync_folders=["INBOX"], initial_sync_days=days,
                                       initial_sync_messages=limit)
    client = await logged_in_client(connector, mailservers, me)
    await client.connect()
    try:
        saved = await eventually(lambda: _done(bridge))
        assert saved["folders"]["INBOX"]["last_uid"] == len(ages)
        # Oldest first, each once; mail outside the window was not even fetched.
        assert [e.remote_id for e in bridge.messages()] == [bare(ids[t]) for t in expected]
        assert sorted(bridge.attempts) == sorted(bare(ids[t]) for t in expected)
        # Later mail comes whatever its date: the window is for the first sync only.
        late = mid("age-late")
        when = now - dt.timedelta(days=90)
        await asyncio.to_thread(mailservers.append, me, "INBOX", simple_message(
            from_addr="max@example.org", to=me, message_id=late, date=when), (), when)
        events = await bridge.wait_messages(len(expected) + 1, timeout=15)
        assert events[-1].remote_id == bare(late)
    finally:
        await stop(client)


async def _done(bridge):  # type: ignore[no-untyped-def]
    meta = bridge.metadata.get("L1", {}).get("sync", {})
    return meta if meta.get("initial_done") else None


async def _last_uid(bridge, folder: str, uid: int):  # type: ignore[no-untyped-def]
    return bridge.metadata.get("L1", {}).get("sync", {}).get("folders", {}).get(folder, {}).get("last_uid") == uid


async def test_a_failure_while_queueing_loses_nothing(mailservers: MailServers, mail_user: tuple[str, str]) -> None:
    me, _ = mail_user
    ids = [mid(f"c{i}") for i in range(6)]
    for i, m in enumerate(ids[:4]):
        await asyncio.to_thread(mailservers.append, me, "INBOX", simple_message(
            from_addr="frank@example.org", to=me, message_id=m, date=T0 + dt.timedelta(minutes=i)))
    connector, bridge = make_connector(mailservers, fetch_batch_size=1, sync_folders=["INBOX"])
    bridge.fail_on[bare(ids[2])] = 1  # the core fails (a crash) on the third message
    client = await logged_in_client(connector, mailservers, me)
    await client.connect()
    try:
        await bridge.wait_messages(4, timeout=30)
        assert LoginState.UNKNOWN_ERROR in [s for s, _ in bridge.states]
        # No cursor was saved before every message of the import was queued.
        failed_at = bridge.attempts.index(bare(ids[2]))
        assert failed_at == 2
        # Nothing was saved before the import was retried and every message queued.
        assert bridge.save_points and min(bridge.save_points) >= bridge.attempts.index(bare(ids[3])) + 1
        await eventually(lambda: _last_uid(bridge, "INBOX", 4))

        # Live mail: the cursor never passes a message the core did not take.
        bridge.fail_on[bare(ids[5])] = 1
        history_len = len(bridge.metadata_history)
        for m in ids[4:]:
            await asyncio.to_thread(mailservers.deliver, simple_message(from_addr="frank@example.org", to=me,
                                                                        message_id=m), me)
        await bridge.wait_messages(6, timeout=30)
        last_uids = [h["sync"]["folders"]["INBOX"]["last_uid"] for h in bridge.metadata_history[history_len:]]
        assert last_uids == sorted(last_uids) and 5 in last_uids
        await eventually(lambda: _last_uid(bridge, "INBOX", 6))
        queued = [e.remote_id for e in bridge.messages()]
        assert sorted(queued) == sorted(bare(m) for m in ids) and len(set(queued)) == 6
    finally:
        await stop(client)


async def test_changed_uidvalidity_brings_no_duplicates(mailservers: MailServers, mail_user: tuple[str, str]) -> None:
    me, _ = mail_user
    first = [simple_message(from_addr=me, to="gail@example.org", message_id=mid(f"u{i}"),
                            date=T0 + dt.timedelta(minutes=i)) for i in range(3)]
    for raw in first:
        await asyncio.to_thread(mailservers.append, me, "Sent", raw)
    # Dovecot does not tell an IDLE on a folder that it was deleted; the next IDLE round's
    # SELECT sees the new UIDVALIDITY.
    connector, bridge = make_connector(mailservers, sync_folders=["\\Sent"], idle_timeout=1)
    client = await logged_in_client(connector, mailservers, me)
    await client.connect()
    try:
        await bridge.wait_messages(3)
        old = (await eventually(lambda: _done(bridge)))["folders"]["Sent"]["uidvalidity"]
        # The folder is recreated (a new UIDVALIDITY) and filled again, plus one new message.
        with mailservers.imap(me) as imap:
            imap.delete_folder("Sent")
            imap.create_folder("Sent")
        for raw in [*first, simple_message(from_addr=me, to="gail@example.org", message_id=mid("u3"))]:
            await asyncio.to_thread(mailservers.append, me, "Sent", raw)

        async def resynced():  # type: ignore[no-untyped-def]
            folder = bridge.metadata["L1"]["sync"]["folders"]["Sent"]
            return folder["uidvalidity"] != old and folder["last_uid"] == 4

        await eventually(resynced, timeout=30)
        events = await bridge.wait_messages(4)
        assert len(events) == 4 and len({e.remote_id for e in events}) == 4
        assert bridge.attempts.count(events[0].remote_id) == 1
    finally:
        await stop(client)


async def test_large_mail_is_fetched_again_when_converted(mailservers: MailServers, mail_user: tuple[str, str]) -> None:
    me, _ = mail_user
    body = "A long letter.\n" + "blah " * 20_000
    root = simple_message(from_addr="hana@example.org", to=me, subject="Long", message_id="<root-long@example.org>",
                          body="Hi\n")
    reply = simple_message(from_addr="hana@example.org", to=me, subject="Re: Long", message_id=mid("big"), body=body,
                           in_reply_to="<root-long@example.org>", references=["<root-long@example.org>"])
    await asyncio.to_thread(mailservers.append, me, "INBOX", root)
    await asyncio.to_thread(mailservers.append, me, "INBOX", reply)
    connector, bridge = make_connector(mailservers, inline_message_size=20_000, sync_folders=["INBOX"])
    client = await logged_in_client(connector, mailservers, me)
    await client.connect()
    try:
        small, big = await bridge.wait_messages(2)
        assert "raw" in small.data and "raw" not in big.data and big.data["size"] > 100_000
        portal = PortalRef(big.portal_id, "L1", None, {"members": ["hana@example.org"]})
        converted = await client.convert_remote(portal, big)
        assert converted.thread_root_id == "root-long@example.org"
        assert converted.metadata["folder"] == "INBOX" and converted.metadata["uid"] == 2
        text = " ".join(str(p.content.get("body", "")) for p in converted.parts)
        assert "A long letter." in text
        first = await client.convert_remote(portal, small)
        assert first.thread_root_id is None and first.metadata["message_id"] == "root-long@example.org"
    finally:
        await stop(client)


async def test_seen_elsewhere_becomes_a_read_receipt(mailservers: MailServers, mail_user: tuple[str, str]) -> None:
    me, _ = mail_user
    uid = await asyncio.to_thread(mailservers.append, me, "INBOX", simple_message(
        from_addr="ivy@example.org", to=me, message_id=mid("seen")))
    connector, bridge = make_connector(mailservers, sync_folders=["INBOX"])
    client = await logged_in_client(connector, mailservers, me)
    await client.connect()
    try:
        (event,) = await bridge.wait_messages(1)
        await eventually(lambda: _done(bridge))
        with mailservers.imap(me) as imap:  # another mail client reads it
            imap.select_folder("INBOX")
            imap.add_flags([uid], [b"\\Seen"])

        async def receipt():  # type: ignore[no-untyped-def]
            return [e for e in bridge.events if e.kind == RemoteEventKind.READ_RECEIPT]

        (read,) = await eventually(receipt, timeout=15)
        assert read.target_id == event.remote_id and read.portal_id == "ivy@example.org"
        assert read.sender.is_from_me and read.sender.remote_id == me
    finally:
        await stop(client)


async def test_states_wrong_password_and_reconnect_after_a_drop(
    mailservers: MailServers, mail_user: tuple[str, str]
) -> None:
    me, password = mail_user
    proxy = TcpProxy(mailservers.host, mailservers.imap_port)
    await proxy.start()
    connector, bridge = make_connector(mailservers, allow_plaintext_loopback=True, sync_folders=["INBOX"])
    client = await logged_in_client(connector, mailservers, me, imap_port=str(proxy.port), imap_security="plain")
    await client.connect()
    try:
        await bridge.wait_state(LoginState.CONNECTED)
        await eventually(lambda: _done(bridge))
        proxy.cut()
        await bridge.wait_state(LoginState.TRANSIENT_DISCONNECT, timeout=15)
        after_cut = mid("after-cut")
        await asyncio.to_thread(mailservers.deliver, simple_message(from_addr="jo@example.org", to=me,
                                                                    message_id=after_cut), me)
        await bridge.wait_state(LoginState.CONNECTED, timeout=15)
        (event,) = await bridge.wait_messages(1, timeout=15)
        assert event.remote_id == bare(after_cut)
    finally:
        await stop(client)
        await proxy.stop()

    # The password changed on the server side: the login says so, with a plain reason.
    connector2, bridge2 = make_connector(mailservers)
    client2 = await logged_in_client(connector2, mailservers, me)
    info = client2.login
    broken = connector2.load_login(type(info)(info.id, info.user_mxid, info.remote_id, info.remote_name,
                                              info.metadata, {"password": password + "-old"}))
    await broken.connect()
    try:
        error = await bridge2.wait_state(LoginState.BAD_CREDENTIALS, timeout=15)
        assert error and "refused the username or password" in error and password not in error
    finally:
        await stop(broken)


async def test_polling_without_idle(mailservers_factory) -> None:  # type: ignore[no-untyped-def]
    servers: MailServers = mailservers_factory(advertise_idle=False)
    me = servers.add_user("pollsync")
    connector, bridge = make_connector(servers, sync_folders=["INBOX"], poll_interval=0.2)
    client = await logged_in_client(connector, servers, me)
    await client.connect()
    try:
        await eventually(lambda: _done(bridge))
        await asyncio.to_thread(servers.deliver, simple_message(from_addr="kim@example.org", to=me), me)
        (event,) = await bridge.wait_messages(1, timeout=10)
        assert event.portal_id == "kim@example.org"
    finally:
        await stop(client)


async def test_mailing_list_room(mailservers: MailServers, mail_user: tuple[str, str]) -> None:
    me, _ = mail_user
    raw = simple_message(from_addr="Lee <lee@example.org>", to="dev@lists.example.org", subject="[dev] Release",
                         list_id="Developers <dev.lists.example.org>")
    raw = raw.replace(b"List-Id:", b"List-Post: <mailto:dev@lists.example.org>\nList-Id:")
    await asyncio.to_thread(mailservers.append, me, "INBOX", raw)
    connector, bridge = make_connector(mailservers, sync_folders=["INBOX"])
    client = await logged_in_client(connector, mailservers, me)
    await client.connect()
    try:
        (event,) = await bridge.wait_messages(1)
        assert event.portal_id == "list:dev.lists.example.org"
        assert event.chat_info is not None and event.chat_info.name == "Developers"
        assert [m.remote_id for m in event.chat_info.members] == ["dev@lists.example.org"]
        assert event.sender.remote_id == "lee@example.org"
    finally:
        await stop(client)


@pytest.mark.parametrize("identifier", ["Alice <ALICE@example.org>", "mailto:alice@example.org"])
async def test_start_chat(mailservers: MailServers, mail_user: tuple[str, str], identifier: str) -> None:
    me, _ = mail_user
    connector, _ = make_connector(mailservers)
    client = await logged_in_client(connector, mailservers, me)
    portal_id, info = await client.resolve_identifier(identifier)
    assert portal_id == "alice@example.org" and info.is_direct
    assert [m.remote_id for m in info.members] == ["alice@example.org"]
    from bridges.core.errors import UserInputError

    with pytest.raises(UserInputError):
        await client.resolve_identifier(me)
    with pytest.raises(UserInputError):
        await client.resolve_identifier("not an address")
