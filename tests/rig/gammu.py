"""A real gammu-smsd for tests: Debian's daemon with the ``dummy`` phone driver and FILES service.

The dummy driver (libgammu/phone/dummy) emulates a phone in a directory: it reads received SMS
from ``<phone>/sms/<folder>/<location>`` files in gammu's SMS backup format (gammu-smsbackup(5);
folder 1 is the SIM inbox) and deletes them once smsd has read them; sending always succeeds with
message reference 255. smsd's FILES service then writes received messages to its inbox, and
moves what it sent from the outbox to the sent directory. So a test can

- make an SMS arrive: :meth:`GammuSmsd.inject_sms` (long texts become concatenated parts),
- make a delivery report arrive: :meth:`GammuSmsd.inject_report`,
- see what the daemon sent: :meth:`GammuSmsd.sent_messages`, :meth:`GammuSmsd.wait_sent`.

Everything lives in one temporary directory; the daemon runs in the foreground and is stopped by
its PID.
"""

from __future__ import annotations

import asyncio
import itertools
import os
import shutil
import signal
import time
from dataclasses import dataclass
from pathlib import Path

SMSD = shutil.which("gammu-smsd") or "/usr/bin/gammu-smsd"
_refs = itertools.count(0x20)


def available() -> bool:
    return Path(SMSD).exists()


@dataclass(frozen=True)
class SentSms:
    filename: str
    number: str
    text: str


def _backup_section(index: int, number: str, text: str, when: float, *, pdu: str = "Deliver",
                    udh: str | None = None, reference: int = 0) -> str:
    stamp = time.strftime("%Y%m%dT%H%M%S", time.gmtime(when))
    lines = [
        f"[SMSBackup{index:03d}]",
        'SMSC = "+33600000000"',
        f"Sent = {stamp}",
        f"DateTime = {stamp}",
        "State = UnRead",
        f'Number = "{number}"',
        f"NumberUnicode = {number.encode('utf-16-be').hex().upper()}",
        'Name = ""',
        f"Text00 = {text.encode('utf-16-be').hex().upper()}",
        "Coding = Unicode",
        "Folder = 1",
        f"Length = {len(text.encode('utf-16-be')) // 2}",
        "Class = -1",
        f"PDU = {pdu}",
        f"MessageReference = {reference}",
    ]
    if udh:
        lines.append(f"UDH = {udh}")
    return "\n".join(lines) + "\n"


def _split_ucs2(text: str, units: int = 67) -> list[str]:
    parts: list[str] = []
    current = ""
    for ch in text:
        if len((current + ch).encode("utf-16-le")) // 2 > units:
            parts.append(current)
            current = ""
        current += ch
    return [*parts, current]


class GammuSmsd:
    def __init__(self, workdir: Path, *, inbox_format: str = "detail", with_log: bool = True) -> None:
        self.workdir = workdir
        self.phone = workdir / "phone"
        self.inbox = workdir / "inbox"
        self.outbox = workdir / "outbox"
        self.sent = workdir / "sent"
        self.error = workdir / "error"
        self.log = workdir / "smsd.log"
        self.config = workdir / "smsdrc"
        self.inbox_format = inbox_format
        self.with_log = with_log
        self.proc: asyncio.subprocess.Process | None = None

    def write_config(self) -> None:
        for d in (self.phone, self.inbox, self.outbox, self.sent, self.error):
            d.mkdir(parents=True, exist_ok=True)
        self.config.write_text(f"""[gammu]
device = {self.phone}
connection = none
model = dummy

[smsd]
service = files
inboxpath = {self.inbox}/
outboxpath = {self.outbox}/
sentsmspath = {self.sent}/
errorsmspath = {self.error}/
inboxformat = {self.inbox_format}
outboxformat = detail
transmitformat = auto
logfile = {self.log}
debuglevel = 1
commtimeout = 1
sendtimeout = 10
loopsleep = 1
receivefrequency = 1
statusfrequency = 0
checksecurity = 0
checkbattery = 0
checksignal = 0
checknetwork = 0
deliveryreport = sms
multiparttimeout = 10
""")

    async def start(self, timeout: float = 30) -> None:
        """Start the daemon; returns once it talks to the (dummy) phone."""
        self.write_config()
        out = open(self.workdir / "smsd.stdout", "ab")
        self.proc = await asyncio.create_subprocess_exec(SMSD, "-c", str(self.config), stdout=out, stderr=out)
        out.close()
        await self.wait_log("Starting phone communication", timeout)

    async def stop(self, timeout: float = 10) -> None:
        proc, self.proc = self.proc, None
        if proc is None or proc.returncode is not None:
            return
        proc.send_signal(signal.SIGTERM)
        try:
            await asyncio.wait_for(proc.wait(), timeout)
        except asyncio.TimeoutError:
            proc.kill()
            await proc.wait()

    def log_text(self) -> str:
        return self.log.read_text(errors="replace") if self.log.exists() else ""

    async def wait_log(self, needle: str, timeout: float = 30) -> None:
        deadline = time.monotonic() + timeout
        while needle not in self.log_text():
            if self.proc is not None and self.proc.returncode is not None:
                raise RuntimeError(f"gammu-smsd exited with {self.proc.returncode}:\n{self.log_text()[-2000:]}")
            if time.monotonic() > deadline:
                raise TimeoutError(f"gammu-smsd never logged {needle!r}:\n{self.log_text()[-2000:]}")
            await asyncio.sleep(0.1)

    # --- the dummy phone -----------------------------------------------------------------

    def _put_on_phone(self, content: str) -> Path:
        folder = self.phone / "sms" / "1"
        folder.mkdir(parents=True, exist_ok=True)
        tmp = self.phone / f".inject-{os.getpid()}-{time.monotonic_ns()}"
        tmp.write_text(content)
        for location in itertools.count(1):
            target = folder / str(location)
            if not target.exists():
                os.replace(tmp, target)  # whole file at once: the daemon never reads half of it
                return target
        raise AssertionError("unreachable")

    def inject_sms(self, sender: str, text: str, *, when: float | None = None) -> Path:
        """An SMS arrives on the phone; long texts arrive as concatenated parts."""
        when = time.time() if when is None else when
        parts = _split_ucs2(text)
        if len(parts) == 1:
            return self._put_on_phone(_backup_section(0, sender, text, when))
        ref = next(_refs) % 256
        sections = [_backup_section(i, sender, part, when, udh=f"050003{ref:02X}{len(parts):02X}{i + 1:02X}")
                    for i, part in enumerate(parts)]
        return self._put_on_phone("\n".join(sections))

    def inject_report(self, number: str, *, reference: int = 255, status: str = "Delivered") -> Path:
        """A delivery report arrives for a message sent to ``number`` (the dummy's TPMR is 255)."""
        return self._put_on_phone(_backup_section(0, number, status, time.time(), pdu="Status_Report",
                                                  reference=reference))

    # --- what it sent --------------------------------------------------------------------

    def sent_messages(self) -> list[SentSms]:
        """The files smsd moved to its sent directory, decoded."""
        out = []
        for path in sorted(self.sent.iterdir()):
            raw = path.read_bytes()
            text = raw.decode("utf-16") if raw.startswith((b"\xff\xfe", b"\xfe\xff")) else raw.decode("utf-8")
            number = path.name.split("_")[3] if path.name.count("_") >= 4 else ""
            out.append(SentSms(path.name, number, text))
        return out

    async def wait_sent(self, text: str, timeout: float = 30) -> SentSms:
        deadline = time.monotonic() + timeout
        while True:
            for sms in self.sent_messages():
                if sms.text == text:
                    return sms
            if time.monotonic() > deadline:
                raise TimeoutError(f"gammu-smsd did not send {text[:30]!r}:\n{self.log_text()[-2000:]}")
            await asyncio.sleep(0.1)
