"""Shared pieces of the benchmarks: a Synapse, a bridge process, the raw-send baseline, CPU use.

A benchmark compares the bridge's rate with a baseline measured in the same run on the same
Synapse: the appservice sending pre-built encrypted events straight to the same rooms, from
the same ghosts, at the same concurrency (one sender per room, in order, like the bridge's
per-portal queues). The ratio, not the absolute rate, is what matters on a noisy machine.
"""

from __future__ import annotations

import argparse
import asyncio
import os
import sqlite3
import statistics
import sys
import tempfile
import time
import uuid
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Awaitable, Callable

import aiohttp
import asyncpg

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from bridges.sandbox.synapse import Synapse, free_port  # noqa: E402
from tests.rig.bridge import BridgeProcess, make_bridge_config  # noqa: E402
from tests.rig.postgres import PostgresServer  # noqa: E402

DOMAIN = "caliopen.localhost"
CLOCK_TICKS = os.sysconf("SC_CLK_TCK")


def cpu_seconds(pid: int) -> float:
    """User + system CPU seconds of a process and its children so far (from /proc)."""
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    utime, stime, cutime, cstime = (int(x) for x in fields[11:15])
    return (utime + stime + cutime + cstime) / CLOCK_TICKS


async def homeserver_events(setup: Setup) -> int:
    """Events the homeserver has stored so far, of every kind (read from its database)."""
    if setup.postgres is not None:
        conn = await asyncpg.connect(setup.postgres.url("synapse"))
        try:
            return int(await conn.fetchval("SELECT COUNT(*) FROM events"))
        finally:
            await conn.close()
    db = setup.synapse.workdir / "homeserver.db"
    with sqlite3.connect(f"file:{db}?mode=ro", uri=True, timeout=5) as conn:
        return int(conn.execute("SELECT COUNT(*) FROM events").fetchone()[0])


def bridged_count(db: str, login_id: str) -> int:
    """Remote messages of a login bridged so far (read from the bridge's SQLite database)."""
    with sqlite3.connect(f"file:{db}?mode=ro", uri=True, timeout=5) as conn:
        return conn.execute("SELECT COUNT(DISTINCT remote_id) FROM message WHERE login_id=?", (login_id,)).fetchone()[0]


async def wait_bridged(db: str, login_id: str, target: int, timeout: float = 1800) -> None:
    """Poll until ``target`` messages of the login are bridged. With BENCH_PROGRESS=1, print the
    count every second (to see where a run spends its time)."""
    t0 = time.monotonic()
    deadline = t0 + timeout
    progress = bool(os.environ.get("BENCH_PROGRESS"))
    shown = 0.0
    while (count := bridged_count(db, login_id)) < target:
        now = time.monotonic()
        if now > deadline:
            raise TimeoutError(f"only {count} of {target} messages bridged")
        if progress and now - shown >= 1:
            shown = now
            print(f"  {now - t0:6.1f} s: {count} bridged", flush=True)
        await asyncio.sleep(0.1)


@dataclass
class Setup:
    synapse: Synapse
    bridge: BridgeProcess
    tmp: Path
    postgres: PostgresServer | None = None  # Synapse's database when it is PostgreSQL


def add_synapse_db_option(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--synapse-db", choices=["postgres", "sqlite"], default="postgres",
                        help="Synapse's database: PostgreSQL with its durability settings, as in production "
                             "(default; needs the bench extra: pip install -e '.[bench]'), or SQLite")


async def start(networks: dict[str, dict[str, Any]], tmp: Path | None = None, synapse_db: str = "postgres") -> Setup:
    tmp = tmp or Path(tempfile.mkdtemp(prefix="caliopen-bench-"))
    port = free_port()
    cfg = make_bridge_config(tmp / "bridge", tag="b", domain=DOMAIN, homeserver_url=f"http://127.0.0.1:{port}",
                             db_url=None, networks=networks)
    cfg.set("logging.level", os.environ.get("BENCH_BRIDGE_LOG", "WARNING"))
    cfg.save()
    postgres, database = None, None
    if synapse_db == "postgres":
        # As a homeserver runs in production: PostgreSQL with its durability settings kept.
        postgres = PostgresServer(tmp / "postgres", durable=True)
        await postgres.start()
        await postgres.create_database("synapse")
        database = {"name": "psycopg2", "args": {"user": postgres.user, "host": postgres.host, "port": postgres.port,
                                                 "database": "synapse", "cp_min": 5, "cp_max": 10}}
    print(f"Synapse on {'PostgreSQL (fsync and synchronous commit on)' if postgres else 'SQLite'}", flush=True)
    synapse = Synapse(tmp / "synapse", server_name=DOMAIN, port=port, log_level=os.environ.get("BENCH_SYNAPSE_LOG", "WARNING"),
                      appservice_files=[tmp / "bridge" / "appservice.yaml"], database=database)
    await synapse.start()
    bridge = BridgeProcess(cfg)
    await bridge.start()
    return Setup(synapse, bridge, tmp, postgres)


async def stop(setup: Setup) -> None:
    await setup.bridge.stop()
    await setup.synapse.stop()
    if setup.postgres is not None:
        await setup.postgres.stop()


async def bridged_event_content(setup: Setup, room: str) -> dict[str, Any]:
    """The content of the newest encrypted event the bridge sent into ``room``: the baseline
    re-sends exactly that, so both sides move events of the same size."""
    cfg = setup.bridge.config
    async with aiohttp.ClientSession() as http:
        async with http.get(f"{setup.synapse.url}/_matrix/client/v3/rooms/{room}/messages",
                            params={"dir": "b", "limit": "20", "user_id": cfg.bot_mxid},
                            headers={"Authorization": f"Bearer {cfg['appservice.as_token']}"}) as r:
            chunk = (await r.json())["chunk"]
    for evt in chunk:
        if evt["type"] == "m.room.encrypted" and evt["sender"] != cfg.bot_mxid:
            return dict(evt["content"])
    raise AssertionError(f"no bridged encrypted event in {room}")


async def raw_send_rate(setup: Setup, rooms: dict[str, str], per_room: int) -> tuple[float, float, float]:
    """Send ``per_room`` pre-built ``m.room.encrypted`` events into each room as its ghost.

    ``rooms`` maps room ID → ghost user ID. The event is one the bridge sent into that room,
    re-sent as it is. Returns (events per second, bridge CPU s/event, Synapse CPU s/event);
    the bridge is idle here, so its share is ~0.
    """
    cfg = setup.bridge.config
    token = cfg["appservice.as_token"]
    contents = {room: await bridged_event_content(setup, room) for room in rooms}
    syn_pid = setup.synapse.pid
    cpu0 = cpu_seconds(syn_pid)
    async with aiohttp.ClientSession() as http:
        async def one_room(room: str, ghost: str) -> None:
            for i in range(per_room):
                url = f"{setup.synapse.url}/_matrix/client/v3/rooms/{room}/send/m.room.encrypted/{uuid.uuid4().hex}"
                async with http.put(url, json=contents[room], params={"user_id": ghost},
                                    headers={"Authorization": f"Bearer {token}"}) as r:
                    assert r.status == 200, await r.text()

        t0 = time.perf_counter()
        await asyncio.gather(*(one_room(room, ghost) for room, ghost in rooms.items()))
        elapsed = time.perf_counter() - t0
    n = per_room * len(rooms)
    return n / elapsed, 0.0, (cpu_seconds(syn_pid) - cpu0) / n


async def raw_rooms_and_send_rate(setup: Setup, user: str, rooms: dict[str, str], per_room: int) -> tuple[float, float]:
    """The first-sync baseline: what the homeserver does for a first sync, done by the bare
    appservice. For each ghost of ``rooms`` (room ID → ghost), a new room made as the bridge
    makes a portal (same request, at most as many at once, the ghost joined, a child of a
    space), then ``per_room`` pre-built encrypted events from that ghost, one room's events in
    order. Returns (messages per second, Synapse CPU s/message)."""
    from bridges.matrix.appservice import ROOM_CREATION_CONCURRENCY

    cfg = setup.bridge.config
    hs, bot = setup.synapse.url, cfg.bot_mxid
    headers = {"Authorization": f"Bearer {cfg['appservice.as_token']}"}
    contents = {room: await bridged_event_content(setup, room) for room in rooms}
    creating = asyncio.Semaphore(ROOM_CREATION_CONCURRENCY)
    syn_pid = setup.synapse.pid
    cpu0 = cpu_seconds(syn_pid)
    async with aiohttp.ClientSession() as http:
        async def call(method: str, path: str, as_user: str, body: dict[str, Any]) -> dict[str, Any]:
            async with http.request(method, f"{hs}/_matrix/client/v3{path}", json=body, params={"user_id": as_user},
                                    headers=headers) as r:
                assert r.status == 200, await r.text()
                return dict(await r.json())

        async def one_room(old_room: str, ghost: str) -> None:
            power = {"users": {ghost: 50, user: 50},
                     "events": {"m.room.encryption": 100, "m.room.power_levels": 100, "m.room.tombstone": 100}}
            async with creating:
                room = (await call("POST", "/createRoom", bot, {
                    "visibility": "private", "preset": "private_chat", "name": f"Baseline {ghost}", "topic": ghost,
                    "is_direct": True, "invite": [user, ghost], "power_level_content_override": power,
                    "initial_state": [
                        {"type": "m.room.encryption", "state_key": "", "content": {"algorithm": "m.megolm.v1.aes-sha2"}},
                        {"type": "m.space.parent", "state_key": space, "content": {"via": [DOMAIN], "canonical": True}},
                    ],
                }))["room_id"]
                await call("POST", f"/join/{room}", ghost, {})
            await call("PUT", f"/rooms/{space}/state/m.space.child/{room}", bot, {"via": [DOMAIN]})
            for _ in range(per_room):
                await call("PUT", f"/rooms/{room}/send/m.room.encrypted/{uuid.uuid4().hex}", ghost, contents[old_room])

        t0 = time.perf_counter()
        space = (await call("POST", "/createRoom", bot, {
            "visibility": "private", "preset": "private_chat", "name": "Baseline space", "invite": [user],
            "creation_content": {"type": "m.space"}}))["room_id"]
        await asyncio.gather(*(one_room(room, ghost) for room, ghost in rooms.items()))
        elapsed = time.perf_counter() - t0
    n = per_room * len(rooms)
    return n / elapsed, (cpu_seconds(syn_pid) - cpu0) / n


@dataclass
class Timing:
    rate: float  # messages per second
    bridge_cpu: float  # bridge CPU seconds per message
    synapse_cpu: float  # Synapse CPU seconds per message
    hs_event_rate: float  # events of every kind the homeserver stored per second (messages, room state)


async def timed(setup: Setup, n: int, run: Callable[[], Awaitable[None]], *, restart: bool = False) -> Timing:
    """Run ``run`` (which returns once ``n`` messages are bridged) and time it. With ``restart``
    the bridge is stopped and is started inside the timing (its start-up counts)."""
    s_pid = setup.synapse.pid
    if restart:
        await setup.bridge.stop()
    e0, s0 = await homeserver_events(setup), cpu_seconds(s_pid)
    t0 = time.perf_counter()
    if restart:
        await setup.bridge.start()
    assert setup.bridge.proc is not None
    b_pid = setup.bridge.proc.pid
    b0 = 0.0 if restart else cpu_seconds(b_pid)
    await run()
    elapsed = time.perf_counter() - t0
    return Timing(n / elapsed, (cpu_seconds(b_pid) - b0) / n, (cpu_seconds(s_pid) - s0) / n,
                  (await homeserver_events(setup) - e0) / elapsed)


def result(t: Timing, raw_rate: float, raw_synapse_cpu: float) -> dict[str, float]:
    """One run's figures, as ``report`` reads them."""
    return {"bridged_rate": t.rate, "raw_rate": raw_rate, "bridge_cpu": t.bridge_cpu, "synapse_cpu": t.synapse_cpu,
            "raw_synapse_cpu": raw_synapse_cpu, "hs_event_rate": t.hs_event_rate}


def report(name: str, runs: list[dict[str, float]]) -> None:
    med = {k: statistics.median(r[k] for r in runs) for k in runs[0]}
    print(f"\n{name}: median of {len(runs)} runs")
    print(f"  bridged:  {med['bridged_rate']:8.1f} messages/s")
    print(f"  baseline: {med['raw_rate']:8.1f} events/s (appservice sending pre-built events, same rooms)")
    print(f"  ratio bridged/baseline: {med['bridged_rate'] / med['raw_rate']:.2f}")
    if "raw_first_rate" in med:
        print(f"  baseline with the rooms made too (the first sync's homeserver work, by the bare appservice): "
              f"{med['raw_first_rate']:.1f} messages/s, ratio bridged/that {med['bridged_rate'] / med['raw_first_rate']:.2f}")
    if "hs_event_rate" in med:
        print(f"  homeserver events stored per second while bridging (messages and room state): "
              f"{med['hs_event_rate']:.1f}, ratio to baseline {med['hs_event_rate'] / med['raw_rate']:.2f}")
    print(f"  CPU per message: bridge {med['bridge_cpu'] * 1000:.1f} ms, Synapse {med['synapse_cpu'] * 1000:.1f} ms"
          f" (bridge/Synapse {med['bridge_cpu'] / med['synapse_cpu']:.2f}); Synapse per baseline event "
          f"{med['raw_synapse_cpu'] * 1000:.1f} ms")
    for i, r in enumerate(runs, 1):
        print(f"  run {i}: bridged {r['bridged_rate']:.1f}/s, baseline {r['raw_rate']:.1f}/s, "
              f"ratio {r['bridged_rate'] / r['raw_rate']:.2f}, bridge CPU {r['bridge_cpu'] * 1000:.1f} ms/msg, "
              f"Synapse CPU {r['synapse_cpu'] * 1000:.1f} ms/msg")
