"""Matrix → email: build_outgoing, and round trips through the parser and the converter."""

from __future__ import annotations

from email import policy
from email.parser import BytesParser
from email.utils import parsedate_to_datetime

import pytest

from bridges.core.errors import UserInputError
from bridges.core.events import MatrixMessage, Media, MessageRef, PortalRef
from bridges.email.convert import EMAIL_KEY, build_outgoing, email_to_matrix, parse_headers
from tests.email.test_convert_corpus import assert_safe_html, check_converted

PORTAL = PortalRef("alice@example.org", "email-abc", "Alice", {})
PNG = (b"\x89PNG\r\n\x1a\n\x00\x00\x00\rIHDR\x00\x00\x00\x02\x00\x00\x00\x03\x08\x02\x00\x00\x00"
       b"\x12\x16\xf1M\x00\x00\x00\x0fIDATx\x9cc\xf8\xcf\xc0\x00\x00\x03\x01\x01\x00\xc9\xfe\x92\xef"
       b"\x00\x00\x00\x00IEND\xaeB`\x82")


def matrix(body: str, *, formatted: str | None = None, msgtype: str = "m.text", media: Media | None = None,
           timestamp: int = 1_715_677_951_000) -> MatrixMessage:
    return MatrixMessage(event_id="$ev", portal=PORTAL, sender_mxid="@bob:caliopen.test", msgtype=msgtype, body=body,
                         formatted_body=formatted, media=media, timestamp=timestamp)


def build(msg: MatrixMessage, **overrides: object):
    kwargs: dict = dict(from_addr="bob@caliopen.test", from_name="Bob Durand", to=["alice@example.org"], cc=[],
                        subject="Re: Lunch on Friday?", in_reply_to="<parent@example.org>",
                        references=["root@example.org", "<parent@example.org>"], domain="caliopen.test")
    kwargs.update(overrides)
    return build_outgoing(msg, **kwargs)


def reparse(mail) -> object:
    return BytesParser(policy=policy.default).parsebytes(mail.as_bytes(policy=policy.SMTP))


def test_headers_and_threading() -> None:
    mail = build(matrix("See you at 12:30."), cc=["Carol <carol@example.net>"])
    parsed = reparse(mail)
    assert str(parsed["From"]) == "Bob Durand <bob@caliopen.test>"
    assert str(parsed["To"]) == "alice@example.org"
    assert str(parsed["Cc"]) == "Carol <carol@example.net>"
    assert str(parsed["Subject"]) == "Re: Lunch on Friday?"
    assert str(parsed["In-Reply-To"]) == "<parent@example.org>"
    assert str(parsed["References"]) == "<root@example.org> <parent@example.org>"
    assert str(parsed["Message-ID"]).endswith("@caliopen.test>")
    assert parsedate_to_datetime(str(parsed["Date"])).timestamp() == 1_715_677_951
    assert str(parsed["Date"]).endswith("+0000")
    assert parsed.get_content_type() == "text/plain"
    assert parsed.get_content().strip() == "See you at 12:30."
    for leak in ("X-Mailer", "User-Agent"):
        assert parsed[leak] is None


def test_parent_is_appended_to_references_once() -> None:
    parsed = reparse(build(matrix("x"), references=["root@example.org"], in_reply_to="parent@example.org"))
    assert str(parsed["References"]) == "<root@example.org> <parent@example.org>"
    new_thread = reparse(build(matrix("x"), references=[], in_reply_to=None, subject="Hello"))
    assert new_thread["In-Reply-To"] is None and new_thread["References"] is None


def test_bridge_made_ids_are_not_written_as_message_ids() -> None:
    parsed = reparse(build(matrix("x"), references=["imap:INBOX:1:2", "sha256:abcd"], in_reply_to="mid:ffff"))
    assert parsed["In-Reply-To"] is None and parsed["References"] is None


def test_long_reference_chains_are_trimmed() -> None:
    refs = [f"r{i}@example.org" for i in range(60)]
    parsed = reparse(build(matrix("x"), references=refs, in_reply_to="r59@example.org"))
    got = str(parsed["References"]).split()
    assert len(got) == 20 and got[0] == "<r0@example.org>" and got[-1] == "<r59@example.org>"


def test_html_goes_as_alternative_and_is_sanitised() -> None:
    formatted = ('<mx-reply><blockquote>old</blockquote></mx-reply><p>See <b>you</b> '
                 '<a href="https://x.example/">there</a><img src="mxc://hs/abc"><script>x()</script></p>')
    body = "> <@alice:hs> old\n\nSee **you** there"
    parsed = reparse(build(matrix(body, formatted=formatted)))
    assert parsed.get_content_type() == "multipart/alternative"
    plain = parsed.get_body(("plain",)).get_content()
    html = parsed.get_body(("html",)).get_content()
    assert plain.strip() == "See **you** there"
    assert "<b>you</b>" in html and '<a href="https://x.example/">there</a>' in html
    assert "old" not in html and "<script" not in html and "mxc://" not in html


def test_subject_for_a_new_thread_is_the_first_line() -> None:
    parsed = reparse(build(matrix("\n  Plans for the summer\nLet's talk."), subject="", in_reply_to=None,
                           references=[]))
    assert str(parsed["Subject"]) == "Plans for the summer"
    long_line = "word " * 40
    parsed = reparse(build(matrix(long_line), subject="", in_reply_to=None, references=[]))
    assert len(str(parsed["Subject"])) <= 80 and str(parsed["Subject"]).endswith("…")


def test_emote() -> None:
    parsed = reparse(build(matrix("waves", msgtype="m.emote", formatted="<em>waves</em>")))
    assert parsed.get_body(("plain",)).get_content().strip() == "* Bob Durand waves"
    assert "* Bob Durand <em>waves</em>" in parsed.get_body(("html",)).get_content()


def test_file_is_attached() -> None:
    media = Media(data=PNG, mimetype="image/png", filename="photo.png")
    parsed = reparse(build(matrix("photo.png", msgtype="m.image", media=media)))
    attachments = list(parsed.iter_attachments())
    assert len(attachments) == 1
    assert attachments[0].get_filename() == "photo.png"
    assert attachments[0].get_content_type() == "image/png"
    assert attachments[0].get_content() == PNG


def test_file_with_caption() -> None:
    media = Media(data=b"%PDF-1.4\n", mimetype="application/pdf", filename="../../report.pdf")
    parsed = reparse(build(matrix("Here is the report", msgtype="m.file", media=media)))
    assert parsed.get_body(("plain",)).get_content().strip() == "Here is the report"
    (att,) = list(parsed.iter_attachments())
    assert "/" not in att.get_filename() and att.get_filename().endswith("report.pdf")
    assert att.get_content() == b"%PDF-1.4\n"


def test_bad_addresses_are_refused() -> None:
    with pytest.raises(UserInputError):
        build(matrix("x"), from_addr="not an address")
    with pytest.raises(UserInputError):
        build(matrix("x"), to=["a@b@c"])


def test_header_injection_is_impossible() -> None:
    parsed = reparse(build(matrix("x"), subject="Hi\r\nBcc: victim@example.org", from_name="Bob\r\nX-Evil: 1"))
    assert parsed["Bcc"] is None and parsed["X-Evil"] is None
    assert "victim@example.org" in str(parsed["Subject"])


def test_non_ascii_round_trip() -> None:
    text = "Ça marche ! 日本語もOK 🎉"
    mail = build(matrix(text, formatted=f"<p>{text}</p>"), subject="Re: Déjeuner 🍽", from_name="Bérénice")
    raw = mail.as_bytes(policy=policy.SMTP)
    assert raw.isascii()  # 7-bit clean for any SMTP server
    h = parse_headers(raw)
    assert h.subject == "Re: Déjeuner 🍽" and h.from_name == "Bérénice"
    converted = email_to_matrix(raw, max_attachment_size=1 << 20)
    check_converted(converted)
    assert text in converted.parts[0].content["body"]


def test_round_trip_through_the_converter() -> None:
    media = Media(data=PNG, mimetype="image/png", filename="photo.png")
    msg = matrix("Photos from Sunday, <b>enjoy</b>", formatted="<p>Photos from <i>Sunday</i></p>", media=media)
    mail = build(msg)
    raw = mail.as_bytes(policy=policy.SMTP)
    h = parse_headers(raw)
    assert h.message_id == str(mail["Message-ID"]).strip("<>")
    assert h.in_reply_to == "parent@example.org" and h.references == ["root@example.org", "parent@example.org"]
    assert h.from_addr == "bob@caliopen.test" and h.to == [("", "alice@example.org")]
    converted = email_to_matrix(raw, max_attachment_size=1 << 20)
    check_converted(converted)
    assert converted.thread_root_id == "root@example.org"
    assert converted.reply_to_id == "parent@example.org"
    body, image = converted.parts
    assert body.content["body"] == "Photos from Sunday, <b>enjoy</b>"
    assert "<i>Sunday</i>" in body.content["formatted_body"]
    assert_safe_html(body.content["formatted_body"])
    assert body.content[EMAIL_KEY]["message_id"] == h.message_id
    assert image.media is not None and image.media.data == PNG and image.media.filename == "photo.png"
    assert (image.media.width, image.media.height) == (2, 3)


def test_reply_metadata_builds_the_next_reply() -> None:
    """What email_to_matrix stores is enough to answer in the same thread."""
    first = build(matrix("Lunch?"), subject="Lunch", in_reply_to=None, references=[])
    converted = email_to_matrix(first.as_bytes(policy=policy.SMTP), max_attachment_size=1000)
    meta = converted.metadata
    ref = MessageRef(meta["message_id"], meta)
    answer = build(MatrixMessage("$2", PORTAL, "@alice:hs", "m.text", "Yes!", reply_to=ref),
                   subject="Re: " + meta["subject"], in_reply_to=meta["message_id"],
                   references=meta["references"] + [meta["message_id"]])
    h = parse_headers(answer.as_bytes(policy=policy.SMTP))
    assert h.in_reply_to == meta["message_id"] and h.references == [meta["message_id"]]
    assert email_to_matrix(answer.as_bytes(), max_attachment_size=1000).thread_root_id == meta["message_id"]


@pytest.mark.parametrize(("data", "mimetype", "filename", "charset"), [
    # UTF-8 with LF line ends and no final newline kept as such
    ("Prénom;Ville\nZoë;Kraków\n€ 12\n\nfin".encode(), "text/plain", "notes.txt", "utf-8"),
    # Latin-1, which is not UTF-8: no charset is made up
    ("Café crème\nNaïve façade\n".encode("latin-1"), "text/plain", "menu.txt", None),
    # Latin-1 whose charset Matrix named, CRLF and a lone CR left as they are
    ("a;b\r\nà;ç\rend\n".encode("latin-1"), "text/csv; charset=ISO-8859-1", "table.csv", "iso-8859-1"),
    # A line far longer than SMTP allows, and a NUL
    (b"x" * 5000 + b"\x00\n", "text/plain", "long.txt", "utf-8"),
], ids=["utf8-lf", "latin1", "latin1-named-crlf-cr", "long-line-nul"])
def test_text_file_is_attached_byte_identical(data: bytes, mimetype: str, filename: str,
                                              charset: str | None) -> None:
    media = Media(data=data, mimetype=mimetype, filename=filename)
    raw = build(matrix(filename, msgtype="m.file", media=media)).as_bytes(policy=policy.SMTP)
    assert raw.isascii() and max(len(line) for line in raw.split(b"\r\n")) <= 78
    parsed = BytesParser(policy=policy.default).parsebytes(raw)
    (att,) = list(parsed.iter_attachments())
    assert att.get_payload(decode=True) == data
    assert att["Content-Transfer-Encoding"] == "base64"
    assert att.get_filename() == filename and att.get_content_type() == mimetype.split(";")[0]
    assert att.get_param("charset") == charset
    assert att.get_content_disposition() == "attachment"


@pytest.mark.parametrize(("mimetype", "expected"), [
    ("", "application/octet-stream"), ("nonsense", "application/octet-stream"),
    ("text/", "application/octet-stream"), ("a/b/c", "application/octet-stream"),
    ("multipart/mixed", "application/octet-stream"), ("message/rfc822", "application/octet-stream"),
    ("Application/JSON", "application/json"),
])
def test_odd_mime_types_of_files(mimetype: str, expected: str) -> None:
    data = b"{}\n\x00\xff"
    parsed = reparse(build(matrix("f", msgtype="m.file", media=Media(data=data, mimetype=mimetype, filename="f"))))
    (att,) = list(parsed.iter_attachments())
    assert att.get_content_type() == expected and att.get_payload(decode=True) == data
