"""Replies from real mail clients: the new text shows, the quoted history is folded; threads and
subjects come from the headers."""

from __future__ import annotations

from pathlib import Path

import pytest

from bridges.email.convert import EMAIL_KEY, QUOTE_SUMMARY, email_to_matrix, thread_subject
from bridges.email.convert_html import split_html_quote, split_text_quote, unflow
from tests.email.test_convert_corpus import assert_safe_html

DATA = Path(__file__).parent / "data"


def body_of(name: str, **kwargs: object) -> dict:
    converted = email_to_matrix((DATA / name).read_bytes(), max_attachment_size=1 << 20, **kwargs)  # type: ignore[arg-type]
    body = converted.parts[0].content
    assert converted.parts[0].part_id == "body"
    if "formatted_body" in body:
        assert_safe_html(body["formatted_body"])
    return body


def split_formatted(body: dict) -> tuple[str, str]:
    """(new part, folded part) of a formatted_body."""
    html = body["formatted_body"]
    assert html.count("<details>") == 1, html
    new, folded = html.split("<details>", 1)
    assert folded.startswith(f"<summary>{QUOTE_SUMMARY}</summary>")
    return new, folded


# (sample, text of the answer, text only in the quoted history)
REPLIES = [
    ("gmail_reply.eml", "Shall we say 12:30 at the café near the station?", "Are you free for lunch on Friday?"),
    ("outlook_desktop_reply.eml", "I have added two comments in the sheet.", "Could you check the quarterly figures"),
    ("outlook_web_reply.eml", "I'll leave them with the neighbour on Saturday.", "Where should I pick up the keys?"),
    ("apple_mail_reply.eml", "The one by the lake is my favourite.", "Here are the photos from Sunday."),
    ("thunderbird_reply.eml", "The ending was not what I expected", "Has everyone finished the"),
]


@pytest.mark.parametrize("name, answer, history", REPLIES, ids=[r[0] for r in REPLIES])
def test_quoted_history_is_folded(name: str, answer: str, history: str) -> None:
    body = body_of(name)
    new, folded = split_formatted(body)
    assert answer in new
    assert history not in new
    assert history in folded.replace("\n", " ").replace("  ", " ") or history.split()[-1] in folded
    # The plain body has the answer, not the history, and says something was left out.
    assert answer.split(",")[0] in body["body"].replace("\n", " ")
    assert history not in body["body"]
    assert "quoted text hidden" in body["body"]
    assert body[EMAIL_KEY]["quoted_text_folded"] is True


@pytest.mark.parametrize("name", ["gmail_reply.eml", "apple_mail_reply.eml", "thunderbird_reply.eml"])
def test_attribution_line_goes_with_the_quote(name: str) -> None:
    new, folded = split_formatted(body_of(name))
    assert "wrote" not in new and "écrit" not in new
    assert "wrote" in folded or "écrit" in folded
    plain = body_of(name)["body"]
    assert "wrote" not in plain and "écrit" not in plain


def test_outlook_header_block_goes_with_the_quote() -> None:
    new, folded = split_formatted(body_of("outlook_desktop_reply.eml"))
    assert "Sent:" not in new and "From:" not in new
    assert "<b>Sent:</b>" in folded


def test_trim_quotes_off_keeps_everything() -> None:
    body = body_of("gmail_reply.eml", trim_quotes=False)
    assert "<details>" not in body["formatted_body"]
    assert "Are you free for lunch on Friday?" in body["formatted_body"]
    assert "Are you free for lunch on Friday?" in body["body"]


def test_interleaved_answers_are_not_folded() -> None:
    body = body_of("interleaved_reply.eml")
    assert "<details>" not in body.get("formatted_body", "")
    for line in ("> 1. Tag the release", "Done, tagged as v2.1.", "> 3. Announce on the list",
                 "Let's wait for the packages first."):
        assert line in body["body"]


def test_forwarded_content_is_not_folded() -> None:
    body = body_of("forward_gmail.eml")
    assert "<details>" not in body["formatted_body"]
    assert "Booking reference ABC123" in body["formatted_body"]
    assert "Booking reference ABC123" in body["body"]


def test_plain_only_reply_gets_folded_html() -> None:
    raw = (b"From: a@example.org\r\nTo: b@example.org\r\nSubject: Re: x\r\nIn-Reply-To: <p@example.org>\r\n"
           b"Content-Type: text/plain; charset=utf-8\r\n\r\nSure, <b>see</b> you then.\r\n\r\n"
           b"On Mon, 1 Jan 2024 at 10:00, B <b@example.org> wrote:\r\n> Lunch?\r\n> \r\n> B\r\n")
    body = email_to_matrix(raw, max_attachment_size=100).parts[0].content
    new, folded = split_formatted(body)
    assert "Sure, &lt;b&gt;see&lt;/b&gt; you then." in new  # plain text is escaped, not interpreted
    assert "Lunch?" in folded and "Lunch?" not in new
    assert body["body"].startswith("Sure, <b>see</b> you then.")


# --- the splitters on their own ---------------------------------------------------------------


@pytest.mark.parametrize(
    "text, new, quoted_start",
    [
        ("Yes.\n\nOn Mon, Jan 1, 2024 at 9:00 AM Bob <bob@x.org> wrote:\n> Coming?\n", "Yes.", "On Mon"),
        ("Yes.\n\nOn Mon, Jan 1, 2024 at 9:00 AM Bob <\nbob@x.org> wrote:\n\n> Coming?\n>\n", "Yes.", "On Mon"),
        ("Oui.\n\nLe lun. 1 janv. 2024 à 09:00, Bob <bob@x.org> a écrit :\n> Tu viens ?\n", "Oui.", "Le lun."),
        ("Ja.\n\nAm 01.01.2024 um 09:00 schrieb Bob:\n> Kommst du?\n", "Ja.", "Am 01"),
        ("Sí.\n\nEl lun, 1 ene 2024 a las 9:00, Bob (<bob@x.org>) escribió:\n> ¿Vienes?\n", "Sí.", "El lun"),
        ("Yes.\n\n-----Original Message-----\nFrom: Bob\nSent: Monday\nTo: Me\nSubject: x\n\nComing?", "Yes.",
         "-----Original Message-----"),
        ("Yes.\n\n________________________________\nFrom: Bob <bob@x.org>\nSent: Monday\n\nComing?", "Yes.", "_____"),
        ("Yes.\n\nFrom: Bob <bob@x.org>\nSent: Monday, 1 January 2024 09:00\nTo: Me\nSubject: x\n\nComing?", "Yes.",
         "From: Bob"),
        ("Yes.\n\n> Coming?\n> \n", "Yes.", "> Coming?"),
    ],
)
def test_split_text_quote(text: str, new: str, quoted_start: str) -> None:
    got_new, got_quoted = split_text_quote(text)
    assert got_new.strip() == new
    assert got_quoted is not None and got_quoted.startswith(quoted_start)


@pytest.mark.parametrize(
    "text",
    [
        "Just a message.\nWith two lines.",
        "> quoted only\n> nothing new",
        "On Monday I wrote: nothing here is a quote.",
        "Here are the numbers:\n> 1 apple\nand that is all.",
        "FYI\n\n---------- Forwarded message ---------\nFrom: Bob <bob@x.org>\nDate: Mon\nSubject: x\n\nBody",
    ],
)
def test_split_text_quote_leaves_non_replies(text: str) -> None:
    assert split_text_quote(text) == (text, None)


def test_split_html_quote_keeps_interleaved_answers() -> None:
    html = ("<div>On Monday, Bob wrote:</div><blockquote>Question 1?</blockquote><div>Answer 1.</div>"
            "<blockquote>Question 2?</blockquote><div>Answer 2.</div>")
    assert split_html_quote(html) == (html, None)


def test_split_html_quote_gmail_interleaved_container_not_folded_whole() -> None:
    html = ('<div>Hi</div><div class="gmail_quote">On Mon, Bob wrote:<blockquote>Q1?</blockquote>'
            "<div>A1.</div><blockquote>Q2?</blockquote><div>A2.</div></div>")
    new, quoted = split_html_quote(html)
    assert quoted is None or "A1." in new


def test_split_html_quote_text_quotes() -> None:
    html = "<div>Hello<br><br>&gt; Subject: Test<br>&gt; From: bob@x.org<br>&gt; Hi<br></div>"
    new, quoted = split_html_quote(html)
    assert quoted is not None
    assert "Hello" in new and "Subject: Test" not in new
    assert "Subject: Test" in quoted


def test_split_html_quote_unclosed_head_and_garbage() -> None:
    for html in ("<head><title>x", "<<<>>>", "", "<blockquote>", "<div class=gmail_quote>only a quote</div>"):
        new, quoted = split_html_quote(html)
        assert quoted is None and new == html


def test_unflow() -> None:
    text = "This is a long \nline that flows.\n> Quoted and \n> flowing too.\n-- \nSig"
    assert unflow(text) == "This is a long line that flows.\n> Quoted and flowing too.\n-- \nSig"
    assert unflow("Join\u00a0 \nme", delsp=True) == "Join\u00a0me"


# --- threads and subjects ---------------------------------------------------------------------


def test_thread_ids_come_from_references() -> None:
    converted = email_to_matrix((DATA / "gmail_reply.eml").read_bytes(), max_attachment_size=1 << 20)
    assert converted.thread_root_id == "CAB7rX=w1root@mail.gmail.com"
    assert converted.reply_to_id == "CAB7rX=w2second@mail.gmail.com"
    meta = converted.metadata
    assert meta["message_id"] == "CAB7rX=w3third@mail.gmail.com"
    assert meta["references"] == ["CAB7rX=w1root@mail.gmail.com", "CAB7rX=w2second@mail.gmail.com"]
    assert meta["subject"] == "Re: Lunch on Friday?"
    assert meta["from"] == "alice@example.org"
    assert meta["to"] == ["bob@caliopen.test"]
    email = converted.parts[0].content[EMAIL_KEY]
    assert email["thread_root"] is False
    assert email["from"] == {"name": "Alice Martin", "address": "alice@example.org"}
    assert "<strong>" not in converted.parts[0].content["formatted_body"].split("<details>")[0][:40]


def test_thread_root_shows_its_subject() -> None:
    converted = email_to_matrix((DATA / "calendar_invite.eml").read_bytes(), max_attachment_size=1 << 20)
    assert converted.thread_root_id is None and converted.reply_to_id is None
    body = converted.parts[0].content
    assert body[EMAIL_KEY]["thread_root"] is True
    assert body["formatted_body"].startswith("<p><strong>Budget review</strong></p>")
    assert body["body"].startswith("Budget review\n\n")


def test_reply_can_be_shown_as_a_thread_root() -> None:
    """A reply whose thread was never bridged starts a thread of its own, subject on top."""
    raw = (DATA / "gmail_reply.eml").read_bytes()
    converted = email_to_matrix(raw, max_attachment_size=1 << 20, as_thread_root=True)
    body = converted.parts[0].content
    assert body[EMAIL_KEY]["thread_root"] is True
    assert body["formatted_body"].startswith("<p><strong>Re: Lunch on Friday?</strong></p>")
    assert converted.thread_root_id == "CAB7rX=w1root@mail.gmail.com"  # still what the headers say


def test_in_reply_to_without_references() -> None:
    converted = email_to_matrix((DATA / "auto_reply.eml").read_bytes(), max_attachment_size=1 << 20)
    assert converted.thread_root_id == "meeting-1@caliopen.test"
    assert converted.reply_to_id == "meeting-1@caliopen.test"
    assert converted.parts[0].content["msgtype"] == "m.notice"  # Auto-Submitted mail


@pytest.mark.parametrize(
    "subject, expected",
    [
        ("Re: Lunch", "Lunch"),
        ("RE: re: Fwd: Lunch", "Lunch"),
        ("AW: WG: Angebot", "Angebot"),
        ("SV: Sv: Möte", "Möte"),
        ("Re[2]: Re(3): Report", "Report"),
        ("TR : RE : Réunion", "Réunion"),
        ("回复：会议", "会议"),
        ("[dev] Re: [dev] Build broken", "[dev] Build broken"),
        ("  Re:   spaced\t out  ", "spaced out"),
        ("Resume: my CV", "Resume: my CV"),
        ("Lunch", "Lunch"),
        ("", ""),
    ],
)
def test_thread_subject(subject: str, expected: str) -> None:
    assert thread_subject(subject) == expected
