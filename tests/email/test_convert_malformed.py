"""Mail that breaks parsers, hostile HTML, attachments and size limits."""

from __future__ import annotations

import json
from email.message import EmailMessage
from pathlib import Path

import pytest

from bridges.email import convert
from bridges.email.convert import EMAIL_KEY, email_to_matrix, parse_headers
from bridges.email.convert_html import html_to_text, sanitize_html
from tests.email.test_convert_corpus import assert_safe_html, check_converted

DATA = Path(__file__).parent / "data"


def convert_file(name: str, max_size: int = 1 << 20, **kwargs: object) -> convert.ConvertedMessage:
    converted = email_to_matrix((DATA / name).read_bytes(), max_attachment_size=max_size, **kwargs)  # type: ignore[arg-type]
    check_converted(converted, max_attachment=max_size)
    return converted


# --- hostile HTML -----------------------------------------------------------------------------


def test_hostile_html_loses_all_active_content() -> None:
    converted = convert_file("hostile_html.eml")
    body = converted.parts[0].content
    html = body["formatted_body"]
    assert_safe_html(html)
    for text in ("Claim your", "prize", "real link", "mail us", "red text", "cell", "Ends here."):
        assert text in html
    assert '<a href="https://safe.example/claim"' in html
    assert '<a href="mailto:desk@prizes.example">' in html
    assert "track.example" not in html and "evil.example" not in html
    assert "alert" not in html and "document.cookie" not in html
    assert "alert" not in body["body"] and "document.cookie" not in body["body"]
    assert body[EMAIL_KEY]["remote_images_blocked"] == 1
    assert "1 remote image not loaded" in html


@pytest.mark.parametrize(
    "dirty",
    [
        '<a href="javascript:alert(1)">x</a>',
        '<a href=" javascript:alert(1)">x</a>',
        '<a href="jav&#x0A;ascript:alert(1)">x</a>',
        '<a href="&#x6A;&#x61;&#x76;&#x61;script:alert(1)">x</a>',
        '<a href="data:text/html,<script>alert(1)</script>">x</a>',
        '<img src=x onerror=alert(1)>x',
        '<svg onload=alert(1)>x</svg>',
        '<p onmouseover="alert(1)" style="color:red">x</p>',
        '<div style="width: expression(alert(1))">x</div>',
        '<scr<script>ipt>alert(1)</script>x',
        '<iframe src="javascript:alert(1)"></iframe>x',
        '<math><mi xlink:href="javascript:alert(1)">x</mi></math>',
        '<a href="https://ok.example" onclick="alert(1)">x</a>',
        '<details open ontoggle=alert(1)>x</details>',
        '<body background="javascript:alert(1)">x',
        '<table><tr><td background="https://t.example/p.gif">x</td></tr></table>',
        '<!--<img src=x onerror=alert(1)>-->x',
        '<noscript><p title="</noscript><img src=x onerror=alert(1)>">x</noscript>',
        '<a href="vbscript:msgbox(1)">x</a>',
        '<code class="language-py evil">x</code>',
    ],
)
def test_sanitize_html_vectors(dirty: str) -> None:
    clean = sanitize_html(dirty).html
    assert_safe_html(clean)
    assert "x" in html_to_text(clean) or not clean


def test_sanitize_keeps_matrix_formatting() -> None:
    html = ('<h2>T</h2><p><b>b</b> <i>i</i> <u>u</u> <del>d</del> <code class="language-python">c</code></p>'
            '<ol start="3"><li>x</li></ol><pre>  pre  </pre><font color="#ff0000">red</font>'
            '<span data-mx-spoiler="">s</span><a href="https://x.example/">l</a><hr><br>')
    clean = sanitize_html(html).html
    for piece in ("<h2>T</h2>", "<b>b</b>", "<i>i</i>", "<u>u</u>", "<del>d</del>",
                  '<code class="language-python">c</code>', '<ol start="3">', "<pre>  pre  </pre>",
                  '<font color="#ff0000">red</font>', '<a href="https://x.example/">l</a>', "<hr>"):
        assert piece in clean


def test_sanitize_counts_only_remote_images() -> None:
    html = ('<img src="https://t.example/a.gif"><img src="http://t.example/b.gif"><img src="//t.example/c">'
            '<img src="cid:logo@x"><img src="data:image/png;base64,AAAA"><p>text</p>')
    result = sanitize_html(html)
    assert result.remote_images == 3
    assert "<img" not in result.html


def test_html_only_mail_gets_plain_text() -> None:
    converted = convert_file("html_only_newsletter.eml")
    body = converted.parts[0].content
    assert "- A new release <https://news.example/a?utm_source=mail>" in body["body"]
    assert "Read more on our site <https://news.example/>." in body["body"]
    assert ".x{color:red}" not in body["body"]
    assert body[EMAIL_KEY]["remote_images_blocked"] == 2
    assert converted.metadata["list_id"] == "weekly.news.example"


def test_html_to_text_structure() -> None:
    text = html_to_text("<p>One</p><p>Two<br>Three</p><ul><li>a</li><li>b</li></ul><blockquote>q</blockquote>"
                        "<script>x()</script><style>p{}</style>")
    assert text == "One\n\nTwo\nThree\n\n- a\n- b\n> q"


# --- broken structure and encodings -----------------------------------------------------------


def test_wrong_boundary_is_recovered() -> None:
    converted = convert_file("broken_boundary.eml")
    assert "The boundary in the header is not the one used here." in converted.parts[0].content["body"]
    assert "--other-boundary" not in converted.parts[0].content["body"]
    files = [p for p in converted.parts if p.media]
    assert [(p.media.filename, p.media.data) for p in files] == [("data.bin", bytes(range(8)))]


def test_unterminated_multipart_keeps_what_arrived() -> None:
    converted = convert_file("unterminated_multipart.eml")
    text = converted.parts[0].content["body"]
    assert "First part is fine." in text and "Nested part without an end." in text


def test_wrong_charset_labels_are_read_right() -> None:
    text = convert_file("wrong_charsets.eml").parts[0].content["body"]
    assert "déjà vu, naïve" in text
    assert "café crème" in text
    assert "Unknown label: € 5." in text
    assert "“quoted” and € sign" in text
    assert "\ufffd" not in text


def test_eight_bit_headers() -> None:
    raw = (DATA / "eightbit_headers.eml").read_bytes()
    h = parse_headers(raw)
    assert h.subject == "Réunion décalée éténaïve"
    assert h.from_name == "Jérôme Müller"
    assert h.from_addr == "jerome@mailer.example"
    assert [a for _, a in h.to] == ["team@mailer.example", "bob@caliopen.test"]
    assert h.to[0][0] == "équipe"
    converted = email_to_matrix(raw, max_attachment_size=100)
    assert "La réunion est déplacée à jeudi." in converted.parts[0].content["body"]


def test_missing_from_date_and_message_id() -> None:
    raw = (DATA / "no_date_no_from.eml").read_bytes()
    h = parse_headers(raw)
    assert (h.from_addr, h.from_name, h.date_ms, h.message_id) == (None, None, None, None)
    converted = email_to_matrix(raw, max_attachment_size=100)
    assert converted.parts[0].content["body"].endswith("No From, no Date, no Message-ID.")
    assert converted.metadata["from"] is None


def test_garbage_headers() -> None:
    raw = (DATA / "garbage_headers.eml").read_bytes()
    h = parse_headers(raw)
    assert h.date_ms is None
    assert h.message_id == "not-bracketed-id@mailer.example"
    assert h.references == ["a@b", "c@d"]
    assert h.cc == []
    converted = email_to_matrix(raw, max_attachment_size=100)
    assert converted.parts[0].content["body"].startswith("This is base64 with garbage")
    assert converted.thread_root_id == "a@b"


def test_headers_parse_from_header_block_only() -> None:
    raw = (DATA / "gmail_reply.eml").read_bytes()
    head = raw.split(b"\n\n", 1)[0] + b"\n\n"
    h = parse_headers(head)
    assert h == parse_headers(raw)
    assert h.date_ms == 1715677951000
    assert h.from_addr == "alice@example.org" and h.from_name == "Alice Martin"
    assert h.to == [("Bob Durand", "bob@caliopen.test")]
    assert h.in_reply_to == "CAB7rX=w2second@mail.gmail.com"


def test_empty_messages() -> None:
    empty = convert_file("empty_body.eml").parts
    assert len(empty) == 1 and empty[0].content["msgtype"] == "m.notice"
    nothing = convert_file("empty_multipart.eml").parts
    assert len(nothing) == 1 and nothing[0].content["body"] == "Nothing inside"


def test_binary_garbage_is_bridged_as_a_file() -> None:
    raw = (DATA / "binary_garbage.eml").read_bytes()
    converted = email_to_matrix(raw, max_attachment_size=1000)
    notice, eml = converted.parts
    assert notice.content["msgtype"] == "m.notice"
    assert "could not be read" in notice.content["body"] and "47 bytes" in notice.content["body"]
    assert eml.media is not None and eml.media.data == raw and eml.media.filename == "message.eml"


def test_conversion_failure_still_bridges_the_mail(monkeypatch: pytest.MonkeyPatch) -> None:
    """Whatever goes wrong inside, the mail arrives as a notice with sender, subject, size and
    the raw message."""

    def explode(*args: object, **kwargs: object) -> None:
        raise RecursionError("simulated")

    monkeypatch.setattr(convert, "collect_body", explode)
    raw = (DATA / "gmail_reply.eml").read_bytes()
    converted = email_to_matrix(raw, max_attachment_size=1 << 20)
    notice = converted.parts[0].content
    assert notice["msgtype"] == "m.notice"
    assert "Alice Martin <alice@example.org>" in notice["body"]
    assert "“Re: Lunch on Friday?”" in notice["body"]
    assert "1.7 KB" in notice["body"]
    assert converted.parts[1].media is not None and converted.parts[1].media.data == raw
    assert converted.metadata["message_id"] == "CAB7rX=w3third@mail.gmail.com"
    assert converted.thread_root_id == "CAB7rX=w1root@mail.gmail.com"
    # Too large to attach: the notice says so.
    small = email_to_matrix(raw, max_attachment_size=100)
    assert len(small.parts) == 1 and "too large to attach" in small.parts[0].content["body"]


def test_deep_nesting_does_not_recurse_forever() -> None:
    depth = 400
    head = "From: a@example.org\nTo: b@example.org\nSubject: deep\nMIME-Version: 1.0\n"
    parts = [head + 'Content-Type: multipart/mixed; boundary="b0"\n\n']
    for i in range(1, depth):
        parts.append(f'--b{i - 1}\nContent-Type: multipart/mixed; boundary="b{i}"\n\n')
    parts.append(f"--b{depth - 1}\nContent-Type: text/plain\n\ndeepest\n")
    raw = "".join(parts).encode()
    converted = email_to_matrix(raw, max_attachment_size=100)
    check_converted(converted)
    assert converted.parts[0].content["msgtype"] in ("m.text", "m.notice")


def test_many_parts_are_capped() -> None:
    msg = EmailMessage()
    msg["From"], msg["To"], msg["Subject"] = "a@example.org", "b@example.org", "many"
    msg.set_content("body")
    for i in range(400):
        msg.add_attachment(b"x", maintype="application", subtype="octet-stream", filename=f"f{i}.bin")
    converted = email_to_matrix(msg.as_bytes(), max_attachment_size=100)
    assert len(converted.parts) <= 302
    assert "too many parts" in converted.parts[0].content["body"]


# --- attachments --------------------------------------------------------------------------------


def test_large_attachment_becomes_a_notice() -> None:
    converted = convert_file("large_attachment.eml", max_size=64 * 1024)
    body, big, preview = converted.parts
    assert big.media is None and big.content["msgtype"] == "m.notice"
    assert "full-size.tiff" in big.content["body"] and "146.5 KB" in big.content["body"]
    assert big.content[f"{EMAIL_KEY}.attachment"]["size"] == 150_000
    assert preview.part_id == "att-2" and preview.content["msgtype"] == "m.image"
    assert preview.media is not None and preview.media.filename == "preview.png"  # no path from the mail
    assert (preview.media.width, preview.media.height) == (4, 3)
    assert preview.content["info"] == {"mimetype": "image/png", "size": len(preview.media.data), "w": 4, "h": 3}
    # Under a bigger limit it is bridged as a file, its type guessed from its name.
    whole = convert_file("large_attachment.eml", max_size=1 << 20).parts[1]
    assert whole.media is not None and len(whole.media.data) == 150_000
    assert whole.content["msgtype"] == "m.file" and whole.media.mimetype == "image/tiff"


def test_inline_images_and_attachments() -> None:
    converted = convert_file("inline_image_related.eml")
    kinds = [(p.part_id, p.content["msgtype"], p.media.filename if p.media else None) for p in converted.parts]
    assert kinds == [("body", "m.text", None), ("att-1", "m.image", "logo.png"), ("att-2", "m.file", "catalogue.pdf")]
    assert converted.parts[1].media.data.startswith(b"\x89PNG")
    assert "Spring collection" in converted.parts[0].content["formatted_body"]
    assert "cid:" not in converted.parts[0].content["formatted_body"]


def test_attachment_only_mail_carries_the_headers_on_the_file() -> None:
    msg = EmailMessage()
    msg["From"], msg["To"], msg["Subject"] = "a@example.org", "b@example.org", "Re: scan"
    msg["In-Reply-To"] = "<scan-1@example.org>"
    msg.add_attachment(b"\x89PNG\r\n\x1a\n", maintype="image", subtype="png", filename="scan.png")
    converted = email_to_matrix(msg.as_bytes(), max_attachment_size=1000)
    assert [p.part_id for p in converted.parts] == ["att-1"]
    assert converted.parts[0].content[EMAIL_KEY]["subject"] == "Re: scan"


def test_calendar_invite() -> None:
    converted = convert_file("calendar_invite.eml")
    body, ics = converted.parts
    assert "Invitation: Budget review, 2024-06-04 09:00 UTC, Room 4, second floor" in body.content["body"]
    assert ics.media is not None and ics.media.filename == "invite.ics" and ics.media.mimetype == "text/calendar"
    assert b"BEGIN:VCALENDAR" in ics.media.data


def test_tnef_attachment_is_a_file() -> None:
    body, tnef = convert_file("tnef_winmail.eml").parts
    assert tnef.content["msgtype"] == "m.file" and tnef.media is not None
    assert tnef.media.filename == "winmail.dat" and tnef.media.data.startswith(b"\x78\x9f\x3e\x22")


def test_nested_messages() -> None:
    converted = convert_file("nested_rfc822.eml")
    text = converted.parts[0].content["body"]
    assert "The inner message text." in text and "The innermost message text." in text
    assert "From: Carol <carol@example.net>" in text
    files = {p.media.filename: p for p in converted.parts if p.media}
    assert set(files) == {"inner.png", "Quarterly report.eml"}
    attached = files["Quarterly report.eml"]
    assert attached.media.mimetype == "message/rfc822"
    assert b"Attached message body." in attached.media.data
    assert parse_headers(attached.media.data).subject == "Quarterly report"


def test_encrypted_mail_is_attached_with_a_note() -> None:
    pgp = convert_file("pgp_mime_encrypted.eml")
    assert "encrypted end to end (PGP/MIME)" in pgp.parts[0].content["body"]
    assert pgp.parts[1].media is not None and b"BEGIN PGP MESSAGE" in pgp.parts[1].media.data
    signed = convert_file("pgp_mime_signed.eml")
    assert [p.part_id for p in signed.parts] == ["body"]  # the detached signature is not shown as a file
    assert "This text is signed." in signed.parts[0].content["body"]


# --- event size -------------------------------------------------------------------------------


def test_huge_text_body_is_cut_and_attached() -> None:
    msg = EmailMessage()
    msg["From"], msg["To"], msg["Subject"] = "a@example.org", "b@example.org", "log"
    line = "2024-05-01 12:00:00 INFO something happened with ünïcödé\n"
    msg.set_content(line * 4000)
    msg.add_alternative("<p>" + "<b>bold</b> text " * 20000 + "</p>", subtype="html")
    converted = email_to_matrix(msg.as_bytes(), max_attachment_size=10 << 20)
    check_converted(converted, max_attachment=10 << 20)
    body = converted.parts[0].content
    assert len(json.dumps(body, ensure_ascii=False).encode()) <= convert.DEFAULT_MAX_EVENT_BYTES
    assert "message cut" in body["body"]
    names = {p.media.filename: p.media for p in converted.parts if p.media}
    assert names["message.txt"].data.decode().count("something happened") == 4000
    assert "<b>bold</b>" in names["message.html"].data.decode()


def test_huge_headers_keep_the_event_small() -> None:
    to = ", ".join(f"Person {i} <person{i}@example.org>" for i in range(2000))
    raw = f"From: a@example.org\nTo: {to}\nSubject: {'long subject ' * 2000}\n\nHi all\n".encode()
    converted = email_to_matrix(raw, max_attachment_size=100)
    check_converted(converted)
    block = converted.parts[0].content[EMAIL_KEY]
    assert len(block["to"]) == 50 and block["more_recipients"] == 1950
    assert len(converted.metadata["to"]) == 2000  # stored with the message for replies


def test_big_quote_is_dropped_before_the_answer() -> None:
    quote = "\n".join(f"> line {i} of a very long quoted history" for i in range(3000))
    raw = (f"From: a@example.org\nTo: b@example.org\nSubject: Re: x\nIn-Reply-To: <p@x>\n"
           f"Content-Type: text/plain; charset=utf-8\n\nShort answer.\n\nOn Monday, B wrote:\n{quote}\n").encode()
    body = email_to_matrix(raw, max_attachment_size=1 << 20).parts[0].content
    assert body["body"].startswith("Short answer.")
    assert "line 2999" not in body["body"]
    assert "<details>" not in body.get("formatted_body", "")
    assert body[EMAIL_KEY]["quoted_text_folded"] is False
    assert len(json.dumps(body).encode()) <= convert.DEFAULT_MAX_EVENT_BYTES
