"""The gammu backend with a real gammu-smsd (dummy phone driver, FILES service)."""

from __future__ import annotations

import asyncio
import time
from collections.abc import AsyncIterator, Callable
from pathlib import Path

import pytest

from bridges.core.errors import LoginError, SendError
from bridges.sms.backends.base import BackendEvent, MessageReceived, MessageState, StatusUpdate
from bridges.sms.backends.gammu import GammuBackend, GammuPaths
from tests.rig import gammu as rig

pytestmark = pytest.mark.skipif(not rig.available(), reason="gammu-smsd is not installed (scripts/apt-packages.txt)")

OWN = "+33699999999"


@pytest.fixture
async def smsd(tmp_path: Path) -> AsyncIterator[rig.GammuSmsd]:
    daemon = rig.GammuSmsd(tmp_path / "smsd")
    await daemon.start()
    yield daemon
    await daemon.stop()


def backend_for(daemon: rig.GammuSmsd, *, log: bool = True) -> GammuBackend:
    paths = GammuPaths(inbox=daemon.inbox, outbox=daemon.outbox, sent=daemon.sent, error=daemon.error,
                       log=daemon.log if log else None)
    return GammuBackend(paths, phone_number=OWN, modem="test", poll_interval=0.1, settle=0.2)


class Collector:
    def __init__(self) -> None:
        self.events: list[BackendEvent] = []
        self.fail = 0

    async def __call__(self, event: BackendEvent) -> None:
        if self.fail:
            self.fail -= 1
            raise RuntimeError("the store is down")
        self.events.append(event)

    async def wait(self, check: Callable[[list[BackendEvent]], bool], timeout: float = 30) -> None:
        deadline = time.monotonic() + timeout
        while not check(self.events):
            assert time.monotonic() < deadline, f"events so far: {self.events}"
            await asyncio.sleep(0.05)


async def test_check(smsd: rig.GammuSmsd, tmp_path: Path) -> None:
    await backend_for(smsd).check()
    broken = GammuPaths(inbox=smsd.inbox, outbox=tmp_path / "missing", sent=smsd.sent, error=smsd.error)
    with pytest.raises(LoginError, match="outbox directory is missing"):
        await GammuBackend(broken, phone_number=OWN, modem="test").check()
    deleting = GammuPaths(inbox=smsd.inbox, outbox=smsd.outbox, sent=smsd.outbox, error=smsd.error)
    with pytest.raises(LoginError, match="deletes what it sends"):
        await GammuBackend(deleting, phone_number=OWN, modem="test").check()


async def test_receive_long_unicode_sms(smsd: rig.GammuSmsd) -> None:
    backend = backend_for(smsd)
    events = Collector()
    await backend.start_receiving(events)
    try:
        text = "Réunion demain à 9h ✓ 🚲 " * 12  # about 300 UCS-2 units: five concatenated parts
        smsd.inject_sms("+33612345678", text)
        await events.wait(lambda ev: len(ev) == 1)
        [msg] = events.events
        assert isinstance(msg, MessageReceived)
        assert (msg.sender, msg.text, msg.to) == ("+33612345678", text, OWN)
        assert "Multipart message" in smsd.log_text()
        assert list(smsd.inbox.glob("IN*")) == [] and len(list((smsd.inbox / "caliopen-done").iterdir())) == 1
    finally:
        await backend.stop()


async def test_a_failed_store_leaves_the_file_for_the_next_round(smsd: rig.GammuSmsd) -> None:
    backend = backend_for(smsd)
    events = Collector()
    events.fail = 2
    await backend.start_receiving(events)
    try:
        smsd.inject_sms("+33612345678", "survives")
        await events.wait(lambda ev: len(ev) == 1)
        assert events.events[0].text == "survives"  # type: ignore[union-attr]
    finally:
        await backend.stop()


@pytest.mark.parametrize("with_log", [True, False])
async def test_send_then_sent_then_delivered(smsd: rig.GammuSmsd, with_log: bool) -> None:
    backend = backend_for(smsd, log=with_log)
    events = Collector()
    await backend.start_receiving(events)
    try:
        text = "Ça part par le modem ✓ " * 10
        message_id = await backend.send(["+33612345678"], text, [])
        sent = await smsd.wait_sent(text)
        assert sent.number == "+33612345678" and message_id in sent.filename
        await events.wait(lambda ev: any(isinstance(e, StatusUpdate) and e.state == MessageState.SENT for e in ev))
        smsd.inject_report("+33612345678", status="Delivered")
        await events.wait(lambda ev: any(isinstance(e, StatusUpdate) and e.state == MessageState.DELIVERED
                                         for e in ev))
        assert [(e.id, e.state) for e in events.events] == [(message_id, MessageState.SENT),
                                                            (message_id, MessageState.DELIVERED)]
    finally:
        await backend.stop()


async def test_failed_report_and_refusals(smsd: rig.GammuSmsd) -> None:
    backend = backend_for(smsd)
    events = Collector()
    await backend.start_receiving(events)
    try:
        message_id = await backend.send(["+33612345678"], "to a switched-off phone", [])
        await smsd.wait_sent("to a switched-off phone")
        smsd.inject_report("+33612345678", reference=7, status="Failed")  # another message's reference
        smsd.inject_report("+33612345678", status="Failed")
        await events.wait(lambda ev: any(isinstance(e, StatusUpdate) and e.state == MessageState.FAILED for e in ev))
        failed = [e for e in events.events if isinstance(e, StatusUpdate) and e.state == MessageState.FAILED]
        assert [e.id for e in failed] == [message_id] and failed[0].error
    finally:
        await backend.stop()
    with pytest.raises(SendError, match="needs 51 SMS"):
        await backend.send(["+33612345678"], "x" * (153 * 50 + 1), [])
    with pytest.raises(SendError, match="one number at a time"):
        await backend.send(["+33612345678", "+33700000000"], "group", [])


async def test_modem_errors_are_reported(smsd: rig.GammuSmsd) -> None:
    """A file smsd moved to its error directory is a failed message (the dummy phone never fails,
    so the move smsd would make is made here)."""
    backend = backend_for(smsd)
    await smsd.stop()  # keep the daemon from sending it
    message_id = await backend.send(["+33612345678"], "will fail", [])
    [queued] = list(smsd.outbox.iterdir())
    queued.rename(smsd.error / queued.name)
    events = Collector()
    await backend.start_receiving(events)
    try:
        await events.wait(lambda ev: len(ev) == 1)
        [update] = events.events
        assert isinstance(update, StatusUpdate) and (update.id, update.state) == (message_id, MessageState.FAILED)
    finally:
        await backend.stop()
