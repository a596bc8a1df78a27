"""How fast a mailbox imports into encrypted rooms, against the homeserver's own rate.

    .venv/bin/python bench/email_import.py [--messages 2000] [--correspondents 50] [--runs 3]
                                           [--no-catch-up] [--synapse-db postgres|sqlite]

Each run fills a fresh Dovecot mailbox with ``messages`` mails from ``correspondents`` people
(one room each), logs a new Matrix user in to it, and times the first sync until every mail is
bridged. Then it stops the bridge, delivers as much mail again, starts the bridge and times the
catch-up into the rooms that now exist. The baseline, measured in the same run on the same
Synapse and rooms at the same concurrency (one sender per room), is the appservice sending
pre-built encrypted events (one the bridge sent, re-sent as it is).
Goal: a ratio of at least 0.8 and bridge CPU per message under half of Synapse's.

The first sync also creates the rooms (a dozen state events each at the homeserver), which the
baseline does not: the report adds the homeserver's own event rate (messages and room state)
during the import, to compare like with like. BENCH_PROGRESS=1 prints the count every second;
BENCH_BRIDGE_LOG / BENCH_SYNAPSE_LOG set the log levels of the two processes.
"""

from __future__ import annotations

import argparse
import asyncio
import datetime as dt
import json
import sqlite3
from email.message import EmailMessage
from email.utils import format_datetime, make_msgid

from harness import Setup, add_synapse_db_option, raw_rooms_and_send_rate, raw_send_rate, report, result, start, stop, timed, wait_bridged

from tests.rig.mailservers import MailServers


def make_mail(i: int, to_addr: str, correspondents: int) -> bytes:
    msg = EmailMessage()
    who = i % correspondents
    msg["From"] = f"Correspondent {who} <c{who}@example.org>"
    msg["To"] = to_addr
    msg["Subject"] = f"Message {i} about topic {i // correspondents}"
    msg["Message-ID"] = make_msgid(idstring=f"bench{i}", domain="example.org")
    msg["Date"] = format_datetime(dt.datetime.fromtimestamp(1_700_000_000 + i * 60, dt.timezone.utc))
    msg.set_content(f"Hello, this is message {i}.\n\n" + "Some text of an ordinary mail. " * 20)
    return bytes(msg)


def rooms_and_ghosts(db: str, login_id: str) -> dict[str, str]:
    with sqlite3.connect(f"file:{db}?mode=ro", uri=True) as conn:
        ghosts = dict(conn.execute("SELECT remote_id, mxid FROM ghost WHERE network='email'"))
        out = {}
        for mxid, metadata in conn.execute("SELECT mxid, metadata FROM portal WHERE login_id=? AND mxid IS NOT NULL",
                                           (login_id,)):
            members = json.loads(metadata).get("members") or []
            if len(members) == 1 and members[0] in ghosts:
                out[mxid] = ghosts[members[0]]
    return out


async def one_run(setup: Setup, servers: MailServers, run: int, n: int, correspondents: int,
                  catch_up: bool = True) -> dict[str, dict[str, float]]:
    bridge = setup.bridge
    db = bridge.config["database.url"].removeprefix("sqlite://")
    address = servers.add_user(f"bench{run}")
    servers.append_many(address, "INBOX", (make_mail(i, address, correspondents) for i in range(n)))
    user = await setup.synapse.register_user(f"bench{run}", "bench-password")
    values = {
        "email": address, "display_name": "", "imap_host": servers.host, "imap_port": str(servers.imaps_port),
        "imap_security": "tls", "smtp_host": servers.host, "smtp_port": str(servers.submission_port),
        "smtp_security": "starttls", "username": "", "password": servers.password(address),
    }
    login_id = ""

    async def login_and_import() -> None:
        nonlocal login_id
        status, step = await bridge.provision("POST", "/login/start/email.password", user)
        assert status == 200, step
        status, done = await bridge.provision(
            "POST", f"/login/step/{step['login_id']}/{step['step_id']}/user_input", user, json=values)
        assert status == 200 and done["type"] == "complete", done
        login_id = done["complete"]["user_login_id"]
        await wait_bridged(db, login_id, n)

    first = await timed(setup, n, login_and_import)
    rooms = rooms_and_ghosts(db, login_id)
    assert len(rooms) == correspondents, f"{len(rooms)} rooms for {correspondents} correspondents"
    raw, _, raw_s_cpu = await raw_send_rate(setup, rooms, n // correspondents)
    raw_first, _ = await raw_rooms_and_send_rate(setup, user, rooms, n // correspondents)
    out = {"first": {**result(first, raw, raw_s_cpu), "raw_first_rate": raw_first}}
    if not catch_up:
        return out

    # Catch-up: as much mail again arrives while the bridge is stopped; once started again it
    # bridges all of it into the rooms that now exist (start-up included in the timing).
    await bridge.stop()
    await asyncio.to_thread(servers.append_many, address, "INBOX",
                            (make_mail(n + i, address, correspondents) for i in range(n)))
    again = await timed(setup, n, lambda: wait_bridged(db, login_id, 2 * n), restart=True)
    raw, _, raw_s_cpu = await raw_send_rate(setup, rooms, n // correspondents)
    out["catch_up"] = result(again, raw, raw_s_cpu)
    return out


async def main(n: int, correspondents: int, runs: int, catch_up: bool, synapse_db: str) -> None:
    import tempfile
    from pathlib import Path

    tmp = Path(tempfile.mkdtemp(prefix="caliopen-bench-email-"))
    servers = MailServers()
    servers.start()
    try:
        setup = await start({"email": {"enabled": True, "tls_ca_file": str(servers.ca_file),
                                       "initial_sync_messages": n + 10, "verify_dkim": False}}, tmp / "stack",
                            synapse_db)
        try:
            results = [await one_run(setup, servers, run, n, correspondents, catch_up) for run in range(runs)]
            report(f"email_import, first sync ({n} mails, {correspondents} correspondents: rooms are created "
                   f"during the import, the baseline sends into existing rooms)", [r["first"] for r in results])
            if catch_up:
                report(f"email_import, catch-up ({n} more mails that arrived while the bridge was stopped, "
                       f"into the existing rooms; the bridge's start-up included)", [r["catch_up"] for r in results])
        finally:
            await stop(setup)
    finally:
        servers.stop()


if __name__ == "__main__":
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--messages", type=int, default=2000)
    p.add_argument("--correspondents", type=int, default=50)
    p.add_argument("--runs", type=int, default=3)
    p.add_argument("--no-catch-up", dest="catch_up", action="store_false",
                   help="measure the first sync only, not the catch-up after a stop")
    add_synapse_db_option(p)
    a = p.parse_args()
    asyncio.run(main(a.messages, a.correspondents, a.runs, a.catch_up, a.synapse_db))
