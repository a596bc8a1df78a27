"""How fast a mailbox imports into encrypted rooms, against the homeserver's own rate.

    .venv/bin/python bench/email_import.py [--messages 2000] [--correspondents 50] [--runs 3]

Each run fills a fresh Dovecot mailbox with ``messages`` mails from ``correspondents`` people
(one room each), logs a new Matrix user in to it, and times the first sync until every mail is
bridged. The baseline, measured in the same run on the same Synapse and rooms at the same
concurrency (one sender per room), is the appservice sending pre-built encrypted events.
Goal: a ratio of at least 0.8 and bridge CPU per message under half of Synapse's.
"""

from __future__ import annotations

import argparse
import asyncio
import datetime as dt
import json
import sqlite3
from email.message import EmailMessage
from email.utils import format_datetime, make_msgid

from harness import wait_bridged, Setup, raw_send_rate, report, start, stop, timed

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


async def one_run(setup: Setup, servers: MailServers, run: int, n: int, correspondents: int) -> dict[str, float]:
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

    rate, b_cpu, s_cpu = await timed(setup, n, login_and_import)
    rooms = rooms_and_ghosts(db, login_id)
    assert len(rooms) == correspondents, f"{len(rooms)} rooms for {correspondents} correspondents"
    raw, _, raw_s_cpu = await raw_send_rate(setup, rooms, n // correspondents)

    # Steady state: as much new mail again, arriving over IDLE into the rooms that now exist.
    async def new_mail() -> None:
        await asyncio.to_thread(servers.append_many, address, "INBOX",
                                (make_mail(n + i, address, correspondents) for i in range(n)))
        await wait_bridged(db, login_id, 2 * n)

    s_rate, s_b_cpu, s_s_cpu = await timed(setup, n, new_mail)
    s_raw, _, s_raw_cpu = await raw_send_rate(setup, rooms, n // correspondents)
    return {"bridged_rate": rate, "raw_rate": raw, "bridge_cpu": b_cpu, "synapse_cpu": s_cpu,
            "raw_synapse_cpu": raw_s_cpu, "steady_rate": s_rate, "steady_raw_rate": s_raw,
            "steady_bridge_cpu": s_b_cpu, "steady_synapse_cpu": s_s_cpu}


async def main(n: int, correspondents: int, runs: int) -> None:
    import tempfile
    from pathlib import Path

    tmp = Path(tempfile.mkdtemp(prefix="caliopen-bench-email-"))
    servers = MailServers()
    servers.start()
    try:
        setup = await start({"email": {"enabled": True, "tls_ca_file": str(servers.ca_file),
                                       "initial_sync_messages": n + 10, "verify_dkim": False}}, tmp / "stack")
        try:
            results = [await one_run(setup, servers, run, n, correspondents) for run in range(runs)]
            report(f"email_import, first sync ({n} mails, {correspondents} correspondents: rooms are created "
                   f"during the import, the baseline sends into existing rooms)", results)
            report(f"email_import, steady state ({n} more mails over IDLE into the existing rooms)", [
                {"bridged_rate": r["steady_rate"], "raw_rate": r["steady_raw_rate"],
                 "bridge_cpu": r["steady_bridge_cpu"], "synapse_cpu": r["steady_synapse_cpu"],
                 "raw_synapse_cpu": r["raw_synapse_cpu"]} for r in results])
        finally:
            await stop(setup)
    finally:
        servers.stop()


if __name__ == "__main__":
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--messages", type=int, default=2000)
    p.add_argument("--correspondents", type=int, default=50)
    p.add_argument("--runs", type=int, default=3)
    a = p.parse_args()
    asyncio.run(main(a.messages, a.correspondents, a.runs))
