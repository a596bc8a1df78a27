"""Every mail of CPython's test_email corpus and of tests/email/data converts without raising,
and nothing active survives in any formatted_body."""

from __future__ import annotations

import json
import os
from html.parser import HTMLParser
from pathlib import Path

import pytest

from bridges.core.events import ConvertedMessage
from bridges.email.convert import EMAIL_KEY, email_to_matrix
from bridges.email.convert_html import MATRIX_ATTRIBUTES, MATRIX_TAGS

DATA = Path(__file__).parent / "data"
MAX_ATTACHMENT = 64 * 1024


def cpython_corpus() -> Path | None:
    """The test_email data directory of this Python, or Debian's libpython3.11-testsuite."""
    candidates = []
    try:
        import test.test_email

        candidates.append(Path(os.path.dirname(test.test_email.__file__)) / "data")
    except ImportError:
        pass
    candidates += [Path("/usr/lib/python3.11/test/test_email/data"), Path("/usr/lib/python3/test/test_email/data")]
    for path in candidates:
        if path.is_dir() and any(path.glob("msg_*.txt")):
            return path
    return None


CORPUS = cpython_corpus()
CORPUS_FILES = sorted(CORPUS.glob("msg_*.txt")) if CORPUS else []
OWN_FILES = sorted(DATA.glob("*.eml"))


class _HtmlAudit(HTMLParser):
    """Collects everything in a formatted_body that Matrix's HTML subset does not allow."""

    def __init__(self) -> None:
        super().__init__(convert_charrefs=True)
        self.problems: list[str] = []

    def handle_starttag(self, tag: str, attrs: list[tuple[str, str | None]]) -> None:
        if tag not in MATRIX_TAGS:
            self.problems.append(f"tag <{tag}>")
        allowed = MATRIX_ATTRIBUTES.get(tag, set())
        for name, value in attrs:
            if name not in allowed:
                self.problems.append(f"attribute {name} on <{tag}>")
            if name == "href":
                scheme = (value or "").split(":", 1)[0].lower()
                if ":" not in (value or "") or scheme not in {"http", "https", "ftp", "mailto", "magnet"}:
                    self.problems.append(f"href {value!r}")

    def handle_startendtag(self, tag: str, attrs: list[tuple[str, str | None]]) -> None:
        self.handle_starttag(tag, attrs)

    def handle_comment(self, data: str) -> None:
        self.problems.append("comment")

    def handle_pi(self, data: str) -> None:
        self.problems.append("processing instruction")


def assert_safe_html(html: str) -> None:
    """Fail when ``html`` holds anything outside Matrix's formatted_body subset, or anything
    that runs or loads: scripts, handlers, styles, javascript:/data: links, images, frames."""
    audit = _HtmlAudit()
    audit.feed(html)
    audit.close()
    assert not audit.problems, audit.problems
    lowered = html.lower()
    for needle in ("<script", "<style", "<iframe", "<img", "<object", "<embed", "<svg", "<form", "javascript:",
                   "vbscript:", "onerror", "onload", "onclick", "onmouseover", "ontoggle", "srcdoc", "<meta", "<base"):
        assert needle not in lowered, needle


def check_converted(converted: ConvertedMessage, max_attachment: int = MAX_ATTACHMENT) -> None:
    """Invariants every conversion must keep."""
    assert converted.parts, "a mail always gives at least one part"
    ids = [p.part_id for p in converted.parts]
    assert len(ids) == len(set(ids))
    assert EMAIL_KEY in converted.parts[0].content
    for part in converted.parts:
        content = part.content
        assert content["msgtype"] in {"m.text", "m.notice", "m.image", "m.file", "m.audio", "m.video"}
        assert isinstance(content["body"], str)
        assert "\x00" not in json.dumps(content)
        json.dumps(content)  # JSON-able, no surrogates that break encoding
        json.dumps(content, ensure_ascii=False).encode("utf-8")
        if "formatted_body" in content:
            assert content["format"] == "org.matrix.custom.html"
            assert_safe_html(content["formatted_body"])
        if part.media is not None:
            assert content["msgtype"] in {"m.image", "m.file", "m.audio", "m.video"}
            assert len(part.media.data) <= max_attachment
            assert content["info"]["size"] == len(part.media.data)
            assert "/" not in part.media.filename and "\\" not in part.media.filename
        size = len(json.dumps({**content, "org.caliopen.privacy": converted.privacy}, ensure_ascii=False).encode())
        assert size < 60_000, "a part must fit in one Matrix event"
    json.dumps(converted.metadata)
    json.dumps(converted.privacy)


@pytest.mark.skipif(CORPUS is None, reason="CPython's test_email corpus is not installed "
                    "(install Debian's libpython3.11-testsuite)")
@pytest.mark.parametrize("path", CORPUS_FILES, ids=lambda p: p.name)
def test_cpython_corpus_converts(path: Path) -> None:
    converted = email_to_matrix(path.read_bytes(), max_attachment_size=MAX_ATTACHMENT)
    check_converted(converted)


def test_cpython_corpus_is_complete() -> None:
    if CORPUS is None:
        pytest.skip("CPython's test_email corpus is not installed (install Debian's libpython3.11-testsuite)")
    assert len(CORPUS_FILES) >= 45


@pytest.mark.parametrize("path", OWN_FILES, ids=lambda p: p.name)
def test_own_samples_convert(path: Path) -> None:
    raw = path.read_bytes()
    check_converted(email_to_matrix(raw, max_attachment_size=MAX_ATTACHMENT))
    check_converted(email_to_matrix(raw.replace(b"\n", b"\r\n"), max_attachment_size=MAX_ATTACHMENT))
    check_converted(email_to_matrix(raw, max_attachment_size=MAX_ATTACHMENT, trim_quotes=False))


@pytest.mark.parametrize("path", OWN_FILES[:12] + CORPUS_FILES[:12], ids=lambda p: p.name)
def test_truncated_mail_still_converts(path: Path) -> None:
    """A mail cut anywhere (a dropped connection, a full disk) is still bridged."""
    raw = path.read_bytes()
    for cut in (1, len(raw) // 3, len(raw) // 2, len(raw) - 7):
        if 0 < cut < len(raw):
            check_converted(email_to_matrix(raw[:cut], max_attachment_size=MAX_ATTACHMENT))


_NASTY = [b"\r\n--", b"\n\n", b"=?utf-8?b?", b"Content-Type: multipart/mixed; boundary=x\n", b"\xff\xfe", b"\x00",
          b"<script>", b"=\n", b"begin 644 x\n", b"Content-Transfer-Encoding: base64\n", b"\n--x\n", b"\n--x--\n",
          b"<blockquote>", b"</div>", b"&#x", b"charset=", b"; name*0*=utf-8''%E9", b"Received: from (\n"]


def _mutate(raw: bytes, rng) -> bytes:  # type: ignore[no-untyped-def]
    data = bytearray(raw)
    for _ in range(rng.randint(1, 6)):
        if not data:
            break
        pos = rng.randrange(len(data))
        action = rng.randrange(5)
        if action == 0:
            data[pos] = rng.randrange(256)
        elif action == 1:
            del data[pos : pos + rng.randint(1, 200)]
        elif action == 2:
            data[pos:pos] = rng.choice(_NASTY)
        elif action == 3:
            end = min(len(data), pos + rng.randint(1, 300))
            data[pos:pos] = data[pos:end]
        else:
            data[pos:pos] = bytes(rng.randrange(256) for _ in range(rng.randint(1, 20)))
    return bytes(data)


def test_mutated_mail_never_breaks_conversion() -> None:
    """Seeded random damage to every sample (bytes flipped, cut, repeated, MIME syntax
    inserted): conversion, header parsing and the privacy block never raise."""
    import random

    from bridges.email.convert import parse_headers
    from bridges.email.privacy import analyse

    rng = random.Random(20240514)
    samples = [p.read_bytes() for p in OWN_FILES if p.stat().st_size < 20_000] + \
        [p.read_bytes() for p in CORPUS_FILES[:20]]
    for _ in range(300):
        raw = _mutate(rng.choice(samples), rng)
        check_converted(email_to_matrix(raw, max_attachment_size=MAX_ATTACHMENT))
        parse_headers(raw)
        assert analyse(raw)["version"] == 1
