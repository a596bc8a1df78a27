"""gammu-smsd with its FILES service: a GSM modem or phone on this machine.

The bridge and gammu-smsd share four spool directories (gammu-smsd-files(7), gammu-smsdrc(5)):

- outbox: the bridge writes ``OUTA<date>_<time>_00_<number>_<id>.txtd`` (UTF-16 with a byte
  order mark; ``d`` asks for a delivery report), written under a temporary name and renamed, so
  smsd never reads half a file. smsd splits long texts into concatenated SMS itself.
- sent / error: smsd moves the file there once sent, or when sending failed.
- inbox: smsd writes each received message as ``IN<date>_<time>_<serial>_<sender>_<part>.txt``.
  With ``InboxFormat = detail`` (gammu-smsbackup(5), recommended) one file holds every part of a
  long message; with ``unicode`` or ``standard`` each file is plain text. Delivery reports
  (``DeliveryReport = sms``) arrive there too, with ``PDU = Status_Report``.

The bridge polls the directories. It moves a received file to the ``done`` directory only after
``on_event`` returned (the event is stored), so a crash in between bridges it again, and the
core's de-duplication keeps it to once. When smsd's log file is given, the message references
(TPMR) it logs pair delivery reports with sent messages exactly; otherwise a report is paired
with the oldest message to that number still waiting for one.
"""

from __future__ import annotations

import asyncio
import logging
import os
import re
import secrets
import time
from dataclasses import dataclass, field
from datetime import datetime, timezone
from pathlib import Path

from bridges.core.errors import ConversionError, LoginError, SendError

from .base import (
    BackendEvent,
    EventCallback,
    Media,
    MediaRef,
    MessageReceived,
    MessageState,
    StatusUpdate,
    now_ms,
)

log = logging.getLogger("caliopen.sms.gammu")

#: gammu cannot encode more parts than this in one message (GSM_MAX_MULTI_SMS).
MAX_PARTS = 50
GSM7_BASIC = set(
    "@£$¥èéùìòÇ\nØø\rÅåΔ_ΦΓΛΩΠΨΣΘΞÆæßÉ !\"#¤%&'()*+,-./0123456789:;<=>?¡ABCDEFGHIJKLMNOPQRSTUVWXYZÄÖÑÜ§"
    "¿abcdefghijklmnopqrstuvwxyzäöñüà"
)
GSM7_EXTENDED = set("^{}\\[~]|€\f")
OUT_NAME = re.compile(r"^OUT[A-Z]?\d{8}_\d{6}_\d{2}_(?P<number>[^_]+)_(?P<id>cal[0-9a-f]{16})\.txt\w*$")
IN_NAME = re.compile(r"^IN(?P<date>\d{8})_(?P<time>\d{6})_(?P<serial>\d+)_(?P<sender>.+)_(?P<part>\d+)\.(txt|bin|smsbackup)$")
TRANSMITTED = re.compile(r"Transmitted (?P<file>\S+) \(total: \d+\) to (?P<number>\S+), message reference 0x(?P<ref>[0-9a-fA-F]+)")


def segments_needed(text: str) -> int:
    """How many SMS a text takes (GSM 7-bit when it fits, else UCS-2). No I/O."""
    if all(c in GSM7_BASIC or c in GSM7_EXTENDED for c in text):
        septets = sum(2 if c in GSM7_EXTENDED else 1 for c in text)
        return 1 if septets <= 160 else -(-septets // 153)
    units = len(text.encode("utf-16-le")) // 2
    return 1 if units <= 70 else -(-units // 67)


@dataclass(frozen=True)
class GammuPaths:
    """The spool directories of one gammu-smsd (its smsdrc's InboxPath, OutboxPath, ...)."""

    inbox: Path
    outbox: Path
    sent: Path
    error: Path
    log: Path | None = None
    done: Path | None = None  # where handled inbox files go; default: <inbox>/caliopen-done

    @property
    def done_dir(self) -> Path:
        return self.done or self.inbox / "caliopen-done"


@dataclass
class _Sent:
    id: str
    number: str
    at: float
    reference: int | None = None


@dataclass
class _Outcomes:
    """What the bridge already reported about its outgoing files (in memory)."""

    reported: dict[str, MessageState] = field(default_factory=dict)
    awaiting_report: list[_Sent] = field(default_factory=list)


# --- the backup ("detail") format -----------------------------------------------------------


def parse_backup(text: str) -> list[dict[str, str]]:
    """The sections of a gammu SMS backup file, as dicts of raw values. No I/O."""
    sections: list[dict[str, str]] = []
    current: dict[str, str] | None = None
    for raw in text.splitlines():
        line = raw.strip()
        if not line or line.startswith((";", "#")):
            continue
        if line.startswith("[") and line.endswith("]"):
            current = {} if line[1:-1].lower().startswith("smsbackup") else None
            if current is not None:
                sections.append(current)
            continue
        if current is None or "=" not in line:
            continue
        key, _, value = line.partition("=")
        value = value.strip()
        if len(value) >= 2 and value[0] == value[-1] == '"':
            value = value[1:-1]
        current[key.strip().lower()] = value
    return sections


def section_text(section: dict[str, str]) -> str:
    """The text of one backup section (hex-encoded UCS-2 in ``TextNN``). No I/O."""
    chunks = [section[k] for k in sorted(k for k in section if re.fullmatch(r"text\d+", k))]
    raw = bytes.fromhex("".join(chunks))
    if section.get("coding", "").lower().startswith("8bit"):
        return ""
    return raw.decode("utf-16-be", errors="replace")


def part_number(section: dict[str, str]) -> int:
    """The part's position in a concatenated SMS, from its UDH (0 when single). No I/O."""
    udh = bytes.fromhex(section.get("udh", "") or "")
    i = 1
    while i + 1 < len(udh):
        iei, length = udh[i], udh[i + 1]
        data = udh[i + 2 : i + 2 + length]
        if iei == 0x00 and len(data) == 3:
            return data[2]
        if iei == 0x08 and len(data) == 4:
            return data[3]
        i += 2 + length
    return 0


def parse_datetime(value: str | None) -> int | None:
    """``20261127T073000Z`` (or without ``Z``: local time) to ms since the epoch."""
    if not value:
        return None
    try:
        if value.endswith("Z"):
            return int(datetime.strptime(value, "%Y%m%dT%H%M%SZ").replace(tzinfo=timezone.utc).timestamp() * 1000)
        return int(datetime.strptime(value, "%Y%m%dT%H%M%S").timestamp() * 1000)
    except ValueError:
        return None


@dataclass(frozen=True)
class InboxItem:
    """One received file, understood."""

    kind: str  # "message" or "report"
    number: str
    text: str
    timestamp: int
    reference: int | None = None


def read_inbox_file(path: Path) -> InboxItem:
    """Parse a file gammu-smsd wrote in its inbox (any InboxFormat). Raises ValueError."""
    match = IN_NAME.match(path.name)
    if not match:
        raise ValueError("not an inbox file name")
    raw = path.read_bytes()
    fallback_ts = parse_datetime(f"{match['date']}T{match['time']}") or now_ms()
    if raw.startswith((b"\xff\xfe", b"\xfe\xff")):
        return InboxItem("message", match["sender"], raw.decode("utf-16"), fallback_ts)
    text = raw.decode("utf-8", errors="replace")
    if "[SMSBackup" not in text:
        return InboxItem("message", match["sender"], text, fallback_ts)
    sections = parse_backup(text)
    if not sections:
        raise ValueError("a backup file without sections")
    first = sections[0]
    number = first.get("number") or match["sender"]
    ts = parse_datetime(first.get("datetime")) or parse_datetime(first.get("sent")) or fallback_ts
    if first.get("pdu", "").lower() == "status_report":
        ref = first.get("messagereference")
        return InboxItem("report", number, section_text(first), ts, int(ref) if ref and ref.isdigit() else None)
    body = "".join(section_text(s) for s in sorted(sections, key=part_number))
    return InboxItem("message", number, body, ts)


# --- the backend ------------------------------------------------------------------------------


class GammuBackend:
    """One gammu-smsd (one modem), shared through its spool directories."""

    name = "gammu"
    third_party = False
    can_send_media = False

    def __init__(
        self,
        paths: GammuPaths,
        *,
        phone_number: str,
        modem: str = "modem",
        poll_interval: float = 1.0,
        settle: float = 0.3,
        history: float = 7 * 24 * 3600,
        report_window: float = 3 * 24 * 3600,
    ) -> None:
        self.paths = paths
        self.phone_number = phone_number
        self.modem = modem
        self.poll_interval = poll_interval
        self.settle = settle
        self.history = history
        self.report_window = report_window
        self._on_event: EventCallback | None = None
        self._task: asyncio.Task[None] | None = None
        self._outcomes = _Outcomes()
        self._handled: set[str] = set()
        self._log_offset = 0
        self._references: dict[str, int] = {}  # outbox file name -> TPMR from smsd's log

    # --- settings -------------------------------------------------------------------------

    async def check(self) -> None:
        """Check that the spool directories exist and can be used (file I/O). Raises LoginError."""
        p = self.paths
        for label, path, mode in (("inbox", p.inbox, os.R_OK | os.W_OK), ("outbox", p.outbox, os.W_OK),
                                  ("sent", p.sent, os.R_OK), ("error", p.error, os.R_OK)):
            if not path.is_dir():
                raise LoginError(f"The modem {self.modem!r} is not set up: its {label} directory is missing.")
            if not os.access(path, mode | os.X_OK):
                raise LoginError(f"The bridge may not use the {label} directory of the modem {self.modem!r}.")
        if p.outbox.resolve() == p.sent.resolve():
            raise LoginError(f"The modem {self.modem!r} deletes what it sends (SentSMSPath = OutboxPath): "
                             "the bridge could not follow delivery.")
        try:
            p.done_dir.mkdir(exist_ok=True)
        except OSError as e:
            raise LoginError(f"The bridge cannot file away received messages of {self.modem!r} ({e.strerror}).") from e

    # --- sending --------------------------------------------------------------------------

    async def send(self, to: list[str], text: str, media: list[Media]) -> str:
        """Put a message in smsd's outbox; returns its ID (file I/O). Raises SendError."""
        if media:
            raise SendError("A GSM modem sends text only: pictures and files cannot be sent through it.")
        if len(to) != 1:
            raise SendError("A GSM modem sends to one number at a time: group conversations cannot be answered.")
        if not text:
            raise SendError("There is no text to send.")
        parts = segments_needed(text)
        if parts > MAX_PARTS:
            raise SendError(f"The message needs {parts} SMS; a modem sends at most {MAX_PARTS}. "
                            "Send it in shorter parts.")
        number = to[0]
        if not re.fullmatch(r"\+?\d{3,20}", number):
            raise SendError(f"{number} is not a number a modem can send to.")
        message_id = f"cal{secrets.token_hex(8)}"
        name = f"OUTA{time.strftime('%Y%m%d_%H%M%S')}_00_{number}_{message_id}.txtd"
        tmp = self.paths.outbox / f".{message_id}.tmp"
        try:
            tmp.write_bytes(b"\xff\xfe" + text.encode("utf-16-le"))
            os.replace(tmp, self.paths.outbox / name)
        except OSError as e:
            tmp.unlink(missing_ok=True)
            raise SendError(f"The modem's outbox cannot be written ({e.strerror}).", retryable=True) from e
        return message_id

    # --- receiving ------------------------------------------------------------------------

    async def start_receiving(self, on_event: EventCallback) -> None:
        """Start polling the spool directories in a background task."""
        self._on_event = on_event
        if self.paths.log and self.paths.log.exists():
            size = self.paths.log.stat().st_size
            self._log_offset = max(0, size - 1024 * 1024)
        self._task = asyncio.create_task(self._run(), name=f"gammu-{self.modem}")

    async def stop(self) -> None:
        task, self._task = self._task, None
        if task:
            task.cancel()
            try:
                await task
            except (asyncio.CancelledError, Exception):
                pass
        self._on_event = None

    async def unregister(self) -> None:
        """Nothing is registered anywhere."""

    async def fetch_media(self, ref: MediaRef) -> Media:
        raise ConversionError("a GSM modem does not receive attachments")

    async def _run(self) -> None:
        while True:
            try:
                await self.poll()
            except asyncio.CancelledError:
                raise
            except Exception:
                log.exception("Polling the spool of modem %s failed", self.modem)
            await asyncio.sleep(self.poll_interval)

    async def poll(self) -> None:
        """One round: read smsd's log, report sent/failed files, bridge received ones (file I/O)."""
        self._read_log()
        await self._scan_outcomes()
        await self._scan_inbox()

    def _read_log(self) -> None:
        path = self.paths.log
        if path is None or not path.exists():
            return
        size = path.stat().st_size
        if size < self._log_offset:
            self._log_offset = 0  # rotated
        with path.open("rb") as f:
            f.seek(self._log_offset)
            chunk = f.read()
        end = chunk.rfind(b"\n") + 1
        self._log_offset += end
        for line in chunk[:end].decode("utf-8", errors="replace").splitlines():
            m = TRANSMITTED.search(line)
            if m:
                self._references[m["file"]] = int(m["ref"], 16)
                for sent in self._outcomes.awaiting_report:
                    if m["file"].endswith(f"_{sent.id}.txtd"):
                        sent.reference = int(m["ref"], 16)

    async def _emit(self, event: BackendEvent) -> None:
        if self._on_event is None:
            raise RuntimeError("not receiving")
        await self._on_event(event)

    async def _scan_outcomes(self) -> None:
        horizon = time.time() - self.history
        found: list[tuple[float, str, str, MessageState]] = []
        for folder, state in ((self.paths.sent, MessageState.SENT), (self.paths.error, MessageState.FAILED)):
            for entry in os.scandir(folder):
                m = OUT_NAME.match(entry.name)
                if not m or m["id"] in self._outcomes.reported:
                    continue
                mtime = entry.stat().st_mtime
                if mtime < horizon:
                    continue
                found.append((mtime, entry.name, m["id"], state))
        for mtime, name, message_id, state in sorted(found):
            number = OUT_NAME.match(name)["number"]  # type: ignore[index]
            error = "the modem could not send it" if state == MessageState.FAILED else None
            await self._emit(StatusUpdate(id=message_id, state=state, timestamp=int(mtime * 1000), error=error,
                                          recipient=number))
            self._outcomes.reported[message_id] = state
            if state == MessageState.SENT:
                self._outcomes.awaiting_report.append(_Sent(message_id, number, mtime, self._references.get(name)))

    async def _scan_inbox(self) -> None:
        now = time.time()
        names = sorted(e.name for e in os.scandir(self.paths.inbox) if e.is_file() and e.name.startswith("IN"))
        for name in names:
            if name in self._handled:
                continue
            path = self.paths.inbox / name
            try:
                if now - path.stat().st_mtime < self.settle:
                    continue  # smsd may still be writing it
                item = read_inbox_file(path)
            except FileNotFoundError:
                continue
            except (OSError, ValueError) as e:
                log.warning("Modem %s: cannot read inbox file %s (%s); left in place", self.modem, name, e)
                self._handled.add(name)
                continue
            if item.kind == "report":
                update = self._match_report(item)
                if update is not None:
                    await self._emit(update)
            else:
                await self._emit(MessageReceived(id=Path(name).stem, sender=item.number, text=item.text,
                                                 timestamp=item.timestamp, to=self.phone_number))
            self._file_away(path)

    def _match_report(self, item: InboxItem) -> StatusUpdate | None:
        text = item.text.strip().lower()
        if text.startswith("delivered"):
            state, error = MessageState.DELIVERED, None
        elif text.startswith("failed"):
            state, error = MessageState.FAILED, "the network could not deliver it"
        else:
            return None  # "Pending", "Unknown": nothing final yet
        cutoff = time.time() - self.report_window
        waiting = [s for s in self._outcomes.awaiting_report if s.at >= cutoff and s.number == item.number]
        exact = [s for s in waiting if item.reference is not None and s.reference == item.reference]
        candidates = exact or [s for s in waiting if s.reference is None]
        if not candidates:
            log.info("Modem %s: a delivery report matched no sent message", self.modem)
            return None
        sent = candidates[0]
        self._outcomes.awaiting_report.remove(sent)
        self._outcomes.reported[sent.id] = state
        return StatusUpdate(id=sent.id, state=state, timestamp=item.timestamp, error=error, recipient=item.number)

    def _file_away(self, path: Path) -> None:
        try:
            self.paths.done_dir.mkdir(exist_ok=True)
            os.replace(path, self.paths.done_dir / path.name)
        except OSError as e:
            log.warning("Modem %s: could not move %s out of the inbox (%s)", self.modem, path.name, e.strerror)
            self._handled.add(path.name)
