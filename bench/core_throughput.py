"""How fast the core bridges remote messages into encrypted rooms, against the homeserver.

    .venv/bin/python bench/core_throughput.py [--rooms 10] [--per-room 30] [--runs 3] [--synapse-db postgres|sqlite]

The fake network delivers ``rooms × per_room`` messages; the bridge stores each in its inbox,
converts it, encrypts it and sends it as the ghost. The baseline, measured in the same run on
the same Synapse and rooms at the same concurrency, is the appservice sending pre-built
encrypted events. It prints the median ratio and the CPU per message of bridge and Synapse.
"""

from __future__ import annotations

import argparse
import asyncio
import sqlite3

from harness import add_synapse_db_option, raw_send_rate, report, result, start, stop, timed, wait_bridged

from tests.fakes.remote import FakeRemote


async def main(rooms: int, per_room: int, runs: int, synapse_db: str) -> None:
    remote = FakeRemote()
    await remote.start()
    setup = await start({"fake": {"enabled": True, "module": "tests.fakes.network", "remote_url": remote.url}},
                        synapse_db=synapse_db)
    try:
        bridge = setup.bridge
        db = bridge.config["database.url"].removeprefix("sqlite://")
        user = await setup.synapse.register_user("bench", "bench-password")
        remote.add_account("bench", "pw")
        login_id = await bridge.login_fake(user, "bench", "pw")
        # Warm-up: one message per room creates the rooms and the ghosts.
        for r in range(rooms):
            remote.push("bench", f"dm:c{r}", f"c{r}", "warm-up")
        done = rooms
        await wait_bridged(db, login_id, done)
        with sqlite3.connect(f"file:{db}?mode=ro", uri=True) as conn:
            room_ghost = {
                room: ghost for room, ghost in conn.execute(
                    "SELECT p.mxid, g.mxid FROM portal p JOIN ghost g ON g.remote_id = substr(p.portal_id, 4) "
                    "WHERE p.login_id=? AND g.network='fake'", (login_id,))
            }
        assert len(room_ghost) == rooms, room_ghost
        results = []
        for run in range(runs):
            n = rooms * per_room

            async def bridged() -> None:
                for i in range(per_room):
                    for r in range(rooms):
                        remote.push("bench", f"dm:c{r}", f"c{r}", f"run {run} message {i}")
                await wait_bridged(db, login_id, done + n)

            timing = await timed(setup, n, bridged)
            done += n
            raw, _, raw_s_cpu = await raw_send_rate(setup, room_ghost, per_room)
            results.append(result(timing, raw, raw_s_cpu))
        report(f"core_throughput ({rooms} rooms × {per_room} messages, fake network)", results)
    finally:
        await stop(setup)
        await remote.stop()


if __name__ == "__main__":
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--rooms", type=int, default=10)
    p.add_argument("--per-room", type=int, default=30)
    p.add_argument("--runs", type=int, default=3)
    add_synapse_db_option(p)
    a = p.parse_args()
    asyncio.run(main(a.rooms, a.per_room, a.runs, a.synapse_db))
