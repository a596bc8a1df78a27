"""bridges.email.imap against the real Dovecot of tests/rig."""

from __future__ import annotations

import asyncio
import os
import time

import pytest

from bridges.core.errors import LoginError
from bridges.email.imap import (
    AuthenticationFailed,
    ImapConnection,
    ImapConnectionLost,
    Security,
    ServerSettings,
    ServerUnreachable,
    is_loopback,
)
from tests.email.tcpproxy import TcpProxy
from tests.email.util import imap_settings
from tests.rig.mailservers import MailServers, free_port, simple_message


@pytest.fixture
async def imap(mailservers: MailServers, mail_user: tuple[str, str]):  # type: ignore[no-untyped-def]
    conn = ImapConnection(imap_settings(mailservers, mail_user[0]))
    await conn.connect()
    yield conn
    await conn.close()


# --- connecting -------------------------------------------------------------------------


@pytest.mark.parametrize("security", [Security.TLS, Security.STARTTLS, Security.PLAIN])
async def test_connects_with_each_security(mailservers: MailServers, mail_user: tuple[str, str],
                                           security: Security) -> None:
    conn = ImapConnection(imap_settings(mailservers, mail_user[0], security=security))
    await conn.connect()
    try:
        assert conn.has("IDLE") and conn.has("CONDSTORE")
        status = await conn.select("INBOX")
        assert status.uidvalidity > 0 and status.uidnext >= 1
        assert status.highestmodseq is not None
    finally:
        await conn.close()


async def test_wrong_password_is_a_plain_login_error(mailservers: MailServers, mail_user: tuple[str, str]) -> None:
    address, password = mail_user
    conn = ImapConnection(imap_settings(mailservers, address, password="not-" + password))
    with pytest.raises(AuthenticationFailed) as err:
        await conn.connect()
    assert isinstance(err.value, LoginError)
    assert "refused the username or password" in err.value.user_message
    assert address in err.value.user_message and password not in err.value.user_message
    assert not conn.connected
    await conn.close()


async def test_unreachable_and_untrusted_servers(mailservers: MailServers, mail_user: tuple[str, str]) -> None:
    address, _ = mail_user
    closed = ImapConnection(ServerSettings("127.0.0.1", free_port(), Security.TLS, address, "x", timeout=5))
    with pytest.raises(ServerUnreachable, match="refused the connection"):
        await closed.connect()
    await closed.close()
    # The rig's self-signed certificate, checked against the system's CAs only.
    untrusted = ImapConnection(ServerSettings(mailservers.host, mailservers.imaps_port, Security.TLS, address, "x"))
    with pytest.raises(ServerUnreachable, match="certificate"):
        await untrusted.connect()
    await untrusted.close()
    # STARTTLS asked of the implicit-TLS port: the greeting never comes in clear.
    wrong = ImapConnection(ServerSettings(mailservers.host, mailservers.imaps_port, Security.STARTTLS, address, "x",
                                          ssl_context=mailservers.ssl_context(), timeout=3))
    with pytest.raises(LoginError):
        await wrong.connect()
    await wrong.close()


async def test_plaintext_only_to_loopback_and_when_allowed(mailservers: MailServers,
                                                           mail_user: tuple[str, str]) -> None:
    address, _ = mail_user
    refused = ImapConnection(imap_settings(mailservers, address, security=Security.PLAIN,
                                           allow_plaintext_loopback=False))
    with pytest.raises(LoginError, match="not allowed"):
        await refused.connect()
    remote = ImapConnection(ServerSettings("imap.example.org", 143, Security.PLAIN, address, "x",
                                           allow_plaintext_loopback=True))
    with pytest.raises(LoginError, match="only allowed to a server on this machine"):
        await remote.connect()
    assert is_loopback("127.0.0.1") and is_loopback("::1") and is_loopback("localhost")
    assert not is_loopback("10.0.0.1") and not is_loopback("example.org")


# --- folders and reading ----------------------------------------------------------------


async def test_finds_sent_by_special_use(imap: ImapConnection) -> None:
    assert await imap.find_sent_folder() == "Sent"
    names = {f.name for f in await imap.list_folders()}
    assert {"INBOX", "Sent", "Drafts", "Trash", "Junk"} <= names


async def test_fetch_in_batches_peeks_and_respects_size_limit(
    mailservers: MailServers, mail_user: tuple[str, str], imap: ImapConnection
) -> None:
    address, _ = mail_user
    raws = [simple_message(from_addr=f"p{i}@example.org", to=address, subject=f"m{i}") for i in range(7)]
    big = simple_message(from_addr="big@example.org", to=address, subject="big", body="x" * 300_000)
    uids = [await asyncio.to_thread(mailservers.append, address, "INBOX", raw) for raw in raws + [big]]
    status = await imap.select("INBOX")
    assert status.exists == 8 and status.uidnext == max(uids) + 1
    fetched = await imap.fetch(await imap.all_uids(), max_body_size=100_000, batch_size=3)
    assert [m.uid for m in fetched] == uids
    for m, raw in zip(fetched[:7], raws, strict=True):
        assert m.raw == raw.replace(b"\n", b"\r\n") or m.raw == raw
        assert b"Subject: " in m.header and m.size == len(m.raw or b"")
        assert m.internaldate is not None and m.modseq is not None
    assert fetched[7].raw is None and fetched[7].size > 300_000 and b"Subject: big" in fetched[7].header
    assert await imap.fetch_raw(uids[7]) is not None
    flags = [f for _, f, _ in await asyncio.to_thread(mailservers.fetch_all, address)]
    assert all(b"\\Seen" not in f for f in flags)


async def test_search_by_uid_range_never_returns_below_start(
    mailservers: MailServers, mail_user: tuple[str, str], imap: ImapConnection
) -> None:
    address, _ = mail_user
    uids = [await asyncio.to_thread(mailservers.append, address, "INBOX", simple_message(from_addr="a@example.org",
                                                                                         to=address)) for _ in range(3)]
    await imap.select("INBOX")
    assert await imap.search_uids(uids[1]) == uids[1:]
    assert await imap.search_uids(uids[-1] + 1) == []  # "n:*" past the end answers the last one
    assert await imap.search_uids(uids[0], uids[1]) == uids[:2]


async def test_set_seen_append_and_changed_flags(
    mailservers: MailServers, mail_user: tuple[str, str], imap: ImapConnection
) -> None:
    address, _ = mail_user
    mid = f"<seen-{os.getpid()}-{time.time_ns()}@example.org>"
    uid = await asyncio.to_thread(mailservers.append, address, "INBOX",
                                  simple_message(from_addr="a@example.org", to=address, message_id=mid))
    before = await imap.select("INBOX", readonly=False)
    assert await imap.search_message_id(mid) == [uid]
    await imap.set_seen([uid])
    changed = await imap.changed_flags(before.highestmodseq or 0)
    assert "\\Seen" in changed[uid]
    appended = await imap.append("Sent", simple_message(from_addr=address, to="b@example.org", subject="out"))
    assert appended is not None
    sent_status = await imap.select("Sent")
    assert appended[0] == sent_status.uidvalidity
    sent = await asyncio.to_thread(mailservers.fetch_all, address, "Sent")
    assert [s[0] for s in sent] == [appended[1]] and b"\\Seen" in sent[0][1]


# --- waiting for mail -------------------------------------------------------------------


async def test_idle_reports_new_mail(mailservers: MailServers, mail_user: tuple[str, str],
                                     imap: ImapConnection) -> None:
    address, _ = mail_user
    await imap.select("INBOX")
    t0 = time.monotonic()
    assert await imap.wait_for_changes(0.5) is False
    assert time.monotonic() - t0 >= 0.45
    waiter = asyncio.create_task(imap.wait_for_changes(60))
    await asyncio.sleep(0.3)
    assert not waiter.done()
    await asyncio.to_thread(mailservers.deliver, simple_message(from_addr="a@example.org", to=address), address)
    assert await asyncio.wait_for(waiter, 20) is True
    status = await imap.select("INBOX")
    assert status.exists == 1
    # The connection is still usable after IDLE.
    assert len(await imap.search_uids(1)) == 1


async def test_close_interrupts_idle(imap: ImapConnection) -> None:
    await imap.select("INBOX")
    waiter = asyncio.create_task(imap.wait_for_changes(120))
    await asyncio.sleep(0.3)
    t0 = time.monotonic()
    await imap.close()
    assert await asyncio.wait_for(waiter, 5) is False
    assert time.monotonic() - t0 < 5


async def test_polls_with_noop_without_idle(mailservers_factory) -> None:  # type: ignore[no-untyped-def]
    servers: MailServers = mailservers_factory(advertise_idle=False)
    address = servers.add_user("poller")
    conn = ImapConnection(imap_settings(servers, address))
    await conn.connect()
    try:
        assert not conn.has("IDLE")
        await conn.select("INBOX")
        waiter = asyncio.create_task(conn.wait_for_changes(60, poll_interval=0.2))
        await asyncio.sleep(0.3)
        assert not waiter.done()
        await asyncio.to_thread(servers.deliver, simple_message(from_addr="a@example.org", to=address), address)
        assert await asyncio.wait_for(waiter, 20) is True
    finally:
        await conn.close()


# --- faults -----------------------------------------------------------------------------


async def test_connection_dropped_mid_fetch(mailservers: MailServers, mail_user: tuple[str, str]) -> None:
    address, _ = mail_user
    body = "".join(f"line {i} of a long message\n" for i in range(40_000))  # about 1 MB
    raw = simple_message(from_addr="big@example.org", to=address, subject="long", body=body)
    uid = await asyncio.to_thread(mailservers.append, address, "INBOX", raw)
    proxy = TcpProxy(mailservers.host, mailservers.imap_port)
    await proxy.start()
    try:
        settings = ServerSettings(mailservers.host, proxy.port, Security.PLAIN, address, mailservers.password(address),
                                  timeout=10, allow_plaintext_loopback=True)
        conn = ImapConnection(settings)
        await conn.connect()
        await conn.select("INBOX")
        proxy.cut_after_bytes(200_000)
        with pytest.raises(ImapConnectionLost):
            await conn.fetch([uid], max_body_size=10_000_000)
        assert proxy.cuts == 1 and not conn.selected
        await conn.close()
        # Nothing was lost: a new connection reads the whole message.
        again = ImapConnection(imap_settings(mailservers, address))
        await again.connect()
        await again.select("INBOX")
        (msg,) = await again.fetch([uid], max_body_size=10_000_000)
        assert msg.raw is not None and msg.size == len(msg.raw) and b"line 39999 of" in msg.raw
        await again.close()
    finally:
        await proxy.stop()


async def test_connection_dropped_during_idle(mailservers: MailServers, mail_user: tuple[str, str]) -> None:
    address, _ = mail_user
    proxy = TcpProxy(mailservers.host, mailservers.imap_port)
    await proxy.start()
    try:
        conn = ImapConnection(ServerSettings(mailservers.host, proxy.port, Security.PLAIN, address,
                                             mailservers.password(address), timeout=10,
                                             allow_plaintext_loopback=True))
        await conn.connect()
        await conn.select("INBOX")
        waiter = asyncio.create_task(conn.wait_for_changes(60))
        await asyncio.sleep(0.3)
        proxy.cut()
        with pytest.raises(ImapConnectionLost):
            await asyncio.wait_for(waiter, 10)
        await conn.close()
    finally:
        await proxy.stop()


async def test_protocol_traffic_never_reaches_the_log(mailservers: MailServers, mail_user: tuple[str, str],
                                                      caplog) -> None:  # type: ignore[no-untyped-def]
    import logging

    caplog.set_level(logging.DEBUG)
    address, password = mail_user
    await asyncio.to_thread(mailservers.append, address, "INBOX",
                            simple_message(from_addr="a@example.org", to=address, body="a private letter\n"))
    # A non-ASCII password travels as a literal, which imapclient would log.
    conn = ImapConnection(imap_settings(mailservers, address, password="pässwörd-" + password))
    with pytest.raises(AuthenticationFailed):
        await conn.connect()
    await conn.close()
    conn = ImapConnection(imap_settings(mailservers, address))
    await conn.connect()
    await conn.select("INBOX")
    (msg,) = await conn.fetch(await conn.all_uids(), max_body_size=100_000)
    assert msg.raw is not None and b"a private letter" in msg.raw
    await conn.append("Sent", simple_message(from_addr=address, to="b@example.org", body="another secret\n"))
    await conn.close()
    text = caplog.text
    assert "private letter" not in text and "another secret" not in text
    assert password not in text and "pässwörd" not in text


@pytest.mark.parametrize("idle", [True, False])
async def test_mail_announced_during_another_command_is_not_missed(
    mailservers: MailServers, mailservers_factory, idle: bool  # type: ignore[no-untyped-def]
) -> None:
    servers = mailservers if idle else mailservers_factory(advertise_idle=False)
    address = servers.add_user(f"announce{int(idle)}{time.time_ns() % 10**6}")
    conn = ImapConnection(imap_settings(servers, address))
    await conn.connect()
    try:
        assert conn.has("IDLE") is idle
        await conn.select("INBOX")
        await asyncio.to_thread(servers.deliver, simple_message(from_addr="a@example.org", to=address), address)
        # The server announces the new mail (EXISTS) in answer to this command, and only once.
        await conn.search_uids(1)
        t0 = time.monotonic()
        assert await conn.wait_for_changes(20, poll_interval=5) is True
        assert time.monotonic() - t0 < 3
        await conn.select("INBOX")
        assert len(await conn.search_uids(1)) == 1
    finally:
        await conn.close()
