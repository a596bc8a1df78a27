"""The SMS side of the session's end-to-end tests: gateways the shared bridges are configured for.

- One Twilio emulator for the session (its API address is in the bridges' config). It owns a
  pool of numbers; each login takes a fresh one with :meth:`SmsRig.twilio_number`, since a
  number's incoming-message webhook points at one login only.
- SMSGate emulators on demand (:meth:`SmsRig.smsgate`), one per test: SMSGate calls every
  webhook registered for an event, so a test's gateway must know only that test's logins. The
  address is given at login, so they need not exist before the bridges; all stay up until the
  end of the session (logins reconnect to theirs when a bridge restarts).
- One gammu-smsd (dummy phone) per bridge, as modem ``usb0`` in that bridge's config, usable by
  the fixed user :meth:`SmsRig.modem_user` only (two logins on one spool would race for its
  inbox). Its spool directories exist from the start; the daemon itself runs only inside
  :meth:`SmsRig.modem_running` (an idle one keeps part of a CPU busy). No modems when
  gammu-smsd is not installed.

Every emulator checks requests and answers against its published spec; :meth:`violations`
gathers what they found.
"""

from __future__ import annotations

import itertools
import secrets
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from pathlib import Path
from typing import Any

from tests.emulators.smsgate import SmsGateEmulator
from tests.emulators.twilio import TwilioEmulator
from tests.rig import gammu

TWILIO_POOL = tuple(f"+1500555{i:04d}" for i in range(100, 160))
HTTP = {"attempts": 2, "first_delay": 0.05, "timeout": 10}


class SmsRig:
    def __init__(self, root: Path, *, tags: tuple[str, ...], domain: str) -> None:
        self.root = root
        self.domain = domain
        self.twilio = TwilioEmulator(numbers=TWILIO_POOL)
        self.smsgates: list[SmsGateEmulator] = []
        self.modems: dict[str, gammu.GammuSmsd] = (
            {tag: gammu.GammuSmsd(root / f"gammu-{tag}") for tag in tags} if gammu.available() else {})
        self._numbers = iter(TWILIO_POOL)
        self._gateways = itertools.count(1)

    async def start(self) -> None:
        """Start the Twilio emulator; make the modems' spool directories (I/O)."""
        await self.twilio.start()
        for smsd in self.modems.values():
            smsd.write_config()

    @asynccontextmanager
    async def modem_running(self, tag: str) -> AsyncIterator[gammu.GammuSmsd]:
        """Run bridge ``tag``'s gammu-smsd for the duration of the block."""
        smsd = self.modems[tag]
        await smsd.start()
        try:
            yield smsd
        finally:
            await smsd.stop()

    async def stop(self) -> None:
        for smsd in self.modems.values():
            await smsd.stop()
        for emu in self.smsgates:
            await emu.stop()
        await self.twilio.stop()

    def modem_user(self, tag: str) -> str:
        """The localpart of the only user allowed to use bridge ``tag``'s modem."""
        return f"smsmodem-{tag}"

    def network_section(self, tag: str) -> dict[str, Any]:
        """The ``networks.sms`` section for bridge ``tag`` (no I/O)."""
        section: dict[str, Any] = {"enabled": True, "default_country": "FR", "http": dict(HTTP),
                                   "twilio": {"api_url": self.twilio.base_url}}
        smsd = self.modems.get(tag)
        if smsd is not None:
            section["gammu"] = {"poll_interval": 0.2, "modems": {"usb0": {
                "inbox": str(smsd.inbox), "outbox": str(smsd.outbox), "sent": str(smsd.sent),
                "error": str(smsd.error), "log": str(smsd.log),
                "users": [f"@{self.modem_user(tag)}:{self.domain}"]}}}
        return section

    async def smsgate(self) -> SmsGateEmulator:
        """A new SMSGate server with its own credentials, up until the end of the session."""
        n = next(self._gateways)
        emu = SmsGateEmulator(username=f"sms-user-{n}", password=secrets.token_urlsafe(12),
                              signing_key=secrets.token_urlsafe(12))
        await emu.start()
        self.smsgates.append(emu)
        return emu

    def twilio_number(self) -> str:
        """A number of the Twilio account no login has used yet."""
        try:
            return next(self._numbers)
        except StopIteration:
            raise AssertionError("the Twilio emulator's number pool is used up; make TWILIO_POOL larger") from None

    def violations(self) -> list[str]:
        return [*self.twilio.violations, *(v for emu in self.smsgates for v in emu.violations)]
