"""Email end to end on the session's SQLite bridge: CPython's test_email corpus and our own
malformed mail all bridge, the sync goes on past them, no formatted_body carries active content,
and the bridge logs no traceback meanwhile."""

from __future__ import annotations

import asyncio
import datetime as dt
import time
from html.parser import HTMLParser
from pathlib import Path
from typing import Any

import pytest

from bridges.email.convert import EMAIL_KEY, parse_headers
from bridges.email.convert_html import MATRIX_ATTRIBUTES, MATRIX_TAGS
from bridges.email.ids import message_remote_id
from tests.conftest import unique
from tests.email.e2e import EmailLogins, body_has, log_offset, log_since
from tests.email.test_convert_corpus import CORPUS_FILES, OWN_FILES
from tests.rig.bridge import BridgeProcess
from tests.rig.mailservers import MailServers, simple_message


class Audit(HTMLParser):
    """What a formatted_body holds beyond Matrix's HTML subset."""

    def __init__(self) -> None:
        super().__init__(convert_charrefs=True)
        self.problems: list[str] = []

    def handle_starttag(self, tag: str, attrs: list[tuple[str, str | None]]) -> None:
        if tag not in MATRIX_TAGS:
            self.problems.append(f"<{tag}>")
        for name, value in attrs:
            if name not in MATRIX_ATTRIBUTES.get(tag, set()) or name.startswith("on"):
                self.problems.append(f"{name} on <{tag}>")
            if name == "href" and (value or "").split(":", 1)[0].lower() not in ("http", "https", "ftp", "mailto",
                                                                                 "magnet"):
                self.problems.append(f"href {value!r}")


def first_parts(user: Any) -> list[dict[str, Any]]:
    out = []
    for room in list(user.client.rooms):
        out += [e for e in user.events(room) if EMAIL_KEY in (e.get("content") or {})
                or "could not be read" in str((e.get("content") or {}).get("body", ""))]
    return out


@pytest.mark.timeout(600)
@pytest.mark.skipif(not CORPUS_FILES, reason="CPython's test_email corpus is not installed")
async def test_odd_mail_bridges_and_the_sync_goes_on(bridge: BridgeProcess, nio_users: Any,
                                                     email_logins: EmailLogins, mailservers: MailServers) -> None:
    me = mailservers.add_user(unique("odd"))
    log_start = log_offset(bridge)
    files: list[Path] = [*CORPUS_FILES, *OWN_FILES]
    when = dt.datetime(2023, 1, 1, tzinfo=dt.timezone.utc)
    raws = [(p.read_bytes(), when + dt.timedelta(minutes=i)) for i, p in enumerate(files)]
    await asyncio.to_thread(mailservers.append_many, me, "INBOX", raws)
    expected = {message_remote_id(parse_headers(raw).message_id, "INBOX", 0, i, raw=raw) for i, (raw, _) in
                enumerate(raws)}
    user = await nio_users("odd")
    await email_logins.login(bridge, user.user_id, me)
    # After all of them, an ordinary mail arrives: the sync did not stop.
    sentinel = unique("sentinel")
    await asyncio.to_thread(mailservers.deliver, simple_message(
        from_addr="Last Sender <last@odd.example>", to=me, subject="After the odd ones", body=f"{sentinel}\n"), me)
    deadline = time.monotonic() + 500
    while True:
        rooms = [r for r in user.client.rooms if any(body_has(sentinel)(e) for e in user.events(r))]
        parts = first_parts(user)
        if rooms and len(parts) >= len(expected) + 1:
            break
        if time.monotonic() > deadline:
            raise TimeoutError(f"{len(parts)} of {len(expected) + 1} mails bridged; sentinel seen: {bool(rooms)}")
        await asyncio.sleep(1)
    problems = {}
    for event in parts:
        html = (event.get("content") or {}).get("formatted_body")
        if html:
            audit = Audit()
            audit.feed(html)
            if audit.problems:
                problems[event["event_id"]] = audit.problems
    for room in list(user.client.rooms):
        for event in user.events(room):
            html = str((event.get("content") or {}).get("formatted_body") or "").lower()
            assert "<script" not in html and "javascript:" not in html and "onerror" not in html
    assert not problems
    assert "Traceback" not in log_since(bridge, log_start)
