"""HTML and plain text of mail bodies, for Matrix: sanitising, quoted history, text ↔ HTML.

Pure functions, no I/O, none of them raises on bad markup:

- :func:`sanitize_html` cuts mail HTML down to the subset Matrix allows in ``formatted_body``
  (no script, style, event handlers, ``javascript:`` links or remote images);
- :func:`split_html_quote` and :func:`split_text_quote` find the quoted history at the end
  of a reply (Gmail, Outlook, Apple Mail, Thunderbird, Yahoo, Proton and plain ``>`` quoting)
  so the converter can fold it into a ``<details>`` block;
- :func:`html_to_text` derives a readable plain text from HTML, :func:`text_to_html` the
  reverse, and :func:`unflow` decodes ``format=flowed`` text (RFC 3676).
"""

from __future__ import annotations

import html as html_lib
import re
from dataclasses import dataclass, field
from html.parser import HTMLParser

import nh3

__all__ = [
    "SanitizedHtml",
    "html_to_text",
    "sanitize_html",
    "split_html_quote",
    "split_text_quote",
    "text_to_html",
    "unflow",
]

# The m.room.message HTML subset of the Matrix spec. ``img`` is left out on purpose: Matrix
# only allows mxc: images and mail only has remote (tracking) or cid: ones.
MATRIX_TAGS = frozenset({
    "font", "del", "h1", "h2", "h3", "h4", "h5", "h6", "blockquote", "p", "a", "ul", "ol", "sup",
    "sub", "li", "b", "i", "u", "strong", "em", "strike", "code", "hr", "br", "div", "table",
    "thead", "tbody", "tr", "th", "td", "caption", "pre", "span", "details", "summary",
})
MATRIX_ATTRIBUTES: dict[str, set[str]] = {
    "font": {"color", "data-mx-bg-color", "data-mx-color"},
    "span": {"data-mx-bg-color", "data-mx-color", "data-mx-spoiler"},
    "a": {"href", "name", "target"},
    "ol": {"start"},
    "code": {"class"},
}
LINK_SCHEMES = frozenset({"http", "https", "ftp", "mailto", "magnet"})
# Elements dropped with everything inside them.
_DROPPED_WITH_CONTENT = {
    "script", "style", "title", "head", "template", "noscript", "iframe", "frame", "frameset",
    "object", "embed", "applet", "svg", "math", "noembed", "noframes", "xml", "select", "button",
}
_COLOR = re.compile(r"^#?[0-9a-fA-F]{3,8}$|^[a-zA-Z]{3,20}$")


def _attribute_filter(tag: str, attr: str, value: str) -> str | None:
    if attr == "href":
        scheme = value.split(":", 1)[0].strip().lower() if ":" in value else ""
        return value if scheme in LINK_SCHEMES else None
    if tag == "code" and attr == "class":
        langs = [c for c in value.split() if c.startswith("language-")]
        return langs[0] if langs else None
    if attr == "target":
        return "_blank"
    if attr in ("color", "data-mx-color", "data-mx-bg-color"):
        return value if _COLOR.match(value.strip()) else None
    if attr == "start":
        return value if value.strip().isdigit() else None
    return value


_CLEANER = nh3.Cleaner(
    tags=set(MATRIX_TAGS),
    clean_content_tags=_DROPPED_WITH_CONTENT,
    attributes={**MATRIX_ATTRIBUTES, "*": set()},  # "*": no attribute on every tag (not even lang)
    attribute_filter=_attribute_filter,
    strip_comments=True,
    link_rel=None,
    url_schemes=set(LINK_SCHEMES),
    url_relative="deny",
)

_EMPTY_ELEMENT = re.compile(r"<(p|div|span|font|b|i|u|strong|em|sup|sub|h[1-6])>(?:\s|&nbsp;)*</\1>")
_BLANK_RUN = re.compile(r"[ \t\r\f\v]*\n[\s]*")
_IMG_TAG = re.compile(r"<img\b[^>]*>", re.IGNORECASE)
_IMG_SRC = re.compile(r"""\bsrc\s*=\s*["']?\s*([a-zA-Z][a-zA-Z0-9+.-]*):""", re.IGNORECASE)
_VISIBLE = re.compile(r"[^\s\u00a0\u200b\u200c\u200d\ufeff]")


@dataclass(frozen=True)
class SanitizedHtml:
    """What :func:`sanitize_html` made: the Matrix-safe HTML (``""`` when nothing visible was
    left) and how many remote (http/https) images it dropped."""

    html: str
    remote_images: int = 0


def count_remote_images(html: str) -> int:
    """Count ``<img>`` tags whose source is fetched from the network (http, https, ftp, or a
    protocol-relative ``//`` URL). Pure."""
    count = 0
    for tag in _IMG_TAG.findall(html):
        match = _IMG_SRC.search(tag)
        if match and match.group(1).lower() in ("http", "https", "ftp"):
            count += 1
        elif re.search(r"""\bsrc\s*=\s*["']?\s*//""", tag, re.IGNORECASE):
            count += 1
    return count


def sanitize_html(html: str) -> SanitizedHtml:
    """Sanitise mail HTML down to the Matrix ``formatted_body`` subset.

    Keeps the tags and attributes the Matrix spec allows; drops script, style, head and other
    active or invisible content with what is inside it, every event handler and style
    attribute, links that are not http/https/ftp/mailto/magnet, and all images (counting
    remote ones, which are trackers). Pure; never raises.
    """
    html = html.replace("\x00", "")
    remote = count_remote_images(html)
    try:
        cleaned = _CLEANER.clean(html)
    except Exception:  # nh3 is robust, but a mail must never stop the sync
        cleaned = html_lib.escape(html_to_text(html)).replace("\n", "<br>")
    if "<pre" not in cleaned:
        cleaned = _BLANK_RUN.sub("\n", cleaned)
    for _ in range(4):
        reduced = _EMPTY_ELEMENT.sub("", cleaned)
        if reduced == cleaned:
            break
        cleaned = reduced
    cleaned = cleaned.strip()
    if not _VISIBLE.search(_strip_tags(cleaned)):
        cleaned = ""
    return SanitizedHtml(cleaned, remote)


def _strip_tags(html: str) -> str:
    return html_lib.unescape(re.sub(r"<[^>]*>", "", html))


def text_to_html(text: str) -> str:
    """Escape plain text into HTML, keeping its line breaks. Pure."""
    return html_lib.escape(text.replace("\x00", ""), quote=False).replace("\r\n", "\n").replace("\n", "<br>\n")


# --- HTML → text ------------------------------------------------------------------------------

_BLOCKS = {
    "p", "div", "section", "article", "header", "footer", "table", "tr", "ul", "ol", "h1", "h2",
    "h3", "h4", "h5", "h6", "pre", "hr", "address", "center", "dl", "dt", "dd", "details",
    "summary", "caption", "form", "fieldset", "main", "nav", "aside", "figure", "figcaption",
}
_SKIP = {"script", "style", "head", "title", "template", "noscript", "xml", "svg", "math", "iframe", "object"}


class _TextMaker(HTMLParser):
    def __init__(self) -> None:
        super().__init__(convert_charrefs=True)
        self.lines: list[str] = []
        self.current: list[str] = []
        self.skip = 0
        self.pre = 0
        self.quote = 0
        self.lists: list[list[int]] = []  # [is_ordered, counter]
        self.links: list[str | None] = []

    def _flush(self, force_blank: bool = False) -> None:
        text = "".join(self.current)
        self.current = []
        if not self.pre:
            text = " ".join(text.split())
        prefix = "> " * self.quote
        if text:
            for line in text.split("\n"):
                self.lines.append((prefix + line).rstrip())
        if force_blank and self.lines and self.lines[-1].strip(" >"):
            self.lines.append(prefix.rstrip())

    def handle_starttag(self, tag: str, attrs: list[tuple[str, str | None]]) -> None:
        if tag == "body":
            self.skip = 0  # a <head> that was never closed
        if tag in _SKIP:
            self.skip += 1
            return
        if self.skip:
            return
        a = dict(attrs)
        if tag == "br":
            self._flush(force_blank=not self.current)
            return
        if tag in _BLOCKS or tag in ("blockquote", "li"):
            self._flush()
        if tag == "blockquote":
            self.quote += 1
        elif tag == "pre":
            self.pre += 1
        elif tag in ("ul", "ol"):
            self.lists.append([1 if tag == "ol" else 0, 0])
        elif tag == "li":
            if self.lists and self.lists[-1][0]:
                self.lists[-1][1] += 1
                self.current.append(f"{self.lists[-1][1]}. ")
            else:
                self.current.append("- ")
        elif tag == "hr":
            self.lines.append("> " * self.quote + "----")
        elif tag == "img":
            alt = (a.get("alt") or "").strip()
            if alt:
                self.current.append(f"[{alt}]")
        elif tag in ("td", "th"):
            self.current.append(" ")
        elif tag == "a":
            href = a.get("href") or ""
            self.links.append(href if href.lower().startswith(("http:", "https:")) else None)
            self._link_start = len("".join(self.current))

    def handle_startendtag(self, tag: str, attrs: list[tuple[str, str | None]]) -> None:
        self.handle_starttag(tag, attrs)
        if tag not in ("br", "hr", "img"):
            self.handle_endtag(tag)

    def handle_endtag(self, tag: str) -> None:
        if tag in _SKIP:
            self.skip = max(0, self.skip - 1)
            return
        if self.skip:
            return
        if tag == "a" and self.links:
            href = self.links.pop()
            label = "".join(self.current)[getattr(self, "_link_start", 0):].strip()
            if href and label and href.rstrip("/") != label.rstrip("/") and href not in label:
                self.current.append(f" <{href}>")
            return
        if tag in _BLOCKS or tag in ("blockquote", "li"):
            self._flush(force_blank=tag in ("p", "blockquote", "h1", "h2", "h3", "table"))
        if tag == "blockquote":
            self.quote = max(0, self.quote - 1)
        elif tag == "pre":
            self.pre = max(0, self.pre - 1)
        elif tag in ("ul", "ol") and self.lists:
            self.lists.pop()

    def handle_data(self, data: str) -> None:
        if not self.skip:
            self.current.append(data.replace("\u00a0", " ") if not self.pre else data)

    def result(self) -> str:
        self._flush()
        out: list[str] = []
        for line in self.lines:
            if not line.strip(" >") and out and not out[-1].strip(" >"):
                continue
            out.append(line)
        while out and not out[-1].strip(" >"):
            out.pop()
        return "\n".join(out).strip("\n")


def html_to_text(html: str) -> str:
    """Derive readable plain text from HTML: paragraphs and line breaks kept, lists as
    ``-``/``1.``, quotes as ``>``, link targets in ``<…>`` after their text, invisible
    content (script, style, head) dropped. Pure; never raises."""
    maker = _TextMaker()
    try:
        maker.feed(html.replace("\x00", ""))
        maker.close()
    except Exception:
        return " ".join(_strip_tags(html).split())
    return maker.result()


# --- format=flowed ------------------------------------------------------------------------------


def unflow(text: str, *, delsp: bool = False) -> str:
    """Decode ``format=flowed`` text (RFC 3676): join soft-broken lines (ending in a space),
    keep quote depth, leave the signature separator alone. Pure."""
    out: list[str] = []
    para: str | None = None
    para_depth = -1
    for line in text.replace("\r\n", "\n").split("\n"):
        depth = len(line) - len(line.lstrip(">"))
        content = line[depth:]
        if content.startswith(" "):
            content = content[1:]  # space-stuffing
        soft = content.endswith(" ") and content != "-- "
        if para is not None and depth == para_depth:
            para += content
        else:
            if para is not None:
                out.append(">" * para_depth + (" " if para_depth else "") + para)
            para, para_depth = content, depth
        if soft:
            if delsp:
                para = para[:-1]
        else:
            out.append(">" * para_depth + (" " if para_depth and para else "") + para)
            para, para_depth = None, -1
    if para is not None:
        out.append(">" * para_depth + (" " if para_depth and para else "") + para)
    return "\n".join(out)


# --- quoted history -----------------------------------------------------------------------------

_WROTE = re.compile(
    r"(\b(wrote|writes|a\s+écrit|schrieb|escribió|ha\s+scritto|escreveu|schreef|skrev|kirjoitti"
    r"|napisał\(a\)|napisał|napisała|napsal\(a\)|napsal|írta|пишет|написал\(а\)|написал|написала|yazdı"
    r"|έγραψε|scrisse|a\s+scris)\b[^:\n]{0,80}|写道|寫道|のメッセージ|님이\s*작성)\s*[:：]\s*$",
    re.IGNORECASE,
)
_ORIGINAL_MESSAGE = re.compile(
    r"^\s*[-_=*]{2,}\s*(original\s+message|ursprüngliche\s+nachricht|message\s+d'origine"
    r"|mensaje\s+original|messaggio\s+originale|oorspronkelijk\s+bericht|originalmeddelande"
    r"|opprinnelig\s+melding|oprindelig\s+meddelelse|alkuperäinen\s+viesti|wiadomość\s+oryginalna"
    r"|mensagem\s+original|původní\s+zpráva|исходное\s+сообщение|reply\s+message)\s*[-_=*]{2,}\s*$",
    re.IGNORECASE,
)
_FORWARD_MARK = re.compile(
    r"^\s*(-{2,}\s*(forwarded\s+message|weitergeleitete\s+nachricht|message\s+transféré|mensaje\s+reenviado"
    r"|messaggio\s+inoltrato|doorgestuurd\s+bericht|vidarebefordrat\s+meddelande|mensagem\s+encaminhada"
    r")\b|begin\s+forwarded\s+message\s*:|anfang\s+der\s+weitergeleiteten|début\s+du\s+message\s+réexpédié)",
    re.IGNORECASE,
)
_HEADER_FROM = r"(from|von|de|da|van|från|fra|od|от|kimden|lähettäjä|feladó|发件人|寄件者|差出人)"
_HEADER_SENT = r"(sent|date|gesendet|datum|envoyé|date\s+d'envoi|enviado|fecha|inviato|data|verzonden|skickat|sendt|wysłano|отправлено|gönderildi|lähetetty|elküldve|发送时间|日期|送信日時)"
_HEADER_BLOCK = re.compile(
    rf"^\s*\*?{_HEADER_FROM}\s*\*?\s*[:：].{{1,300}}?\n(?:.*\n){{0,3}}?\s*\*?{_HEADER_SENT}\s*\*?\s*[:：]",
    re.IGNORECASE,
)
_HEADER_BLOCK_FLAT = re.compile(
    rf"^\s*{_HEADER_FROM}\s*[:：].{{1,300}}?\b{_HEADER_SENT}\s*[:：].{{1,200}}?\b(to|an|à|a|aan|till|til|do|кому|subject|betreff|objet|asunto|oggetto|onderwerp|ämne|emne|temat|тема)\s*[:：]",
    re.IGNORECASE | re.DOTALL,
)
_UNDERSCORES = re.compile(r"^\s*_{20,}\s*$")


def is_attribution(text: str) -> bool:
    """Whether ``text`` (one line, or a few joined) reads like "On <date>, <who> wrote:" in one of
    the common mail languages. Pure."""
    text = " ".join(text.split())
    return 0 < len(text) <= 500 and bool(_WROTE.search(text))


def is_forward_marker(text: str) -> bool:
    """Whether ``text`` starts like a forwarded message ("---------- Forwarded message"). Pure."""
    return bool(_FORWARD_MARK.match(text.lstrip()))


def _has_text(lines: list[str]) -> bool:
    return any(_VISIBLE.search(line) for line in lines)


def split_text_quote(text: str, *, allow_forward: bool = False) -> tuple[str, str | None]:
    """Split a plain-text reply into (new text, quoted history) when the history is trailing:
    an attribution line ("On … wrote:", possibly wrapped on up to three lines) or nothing
    followed by ``>`` lines up to the end, or an Outlook-style separator ("-----Original
    Message-----", a line of underscores, a ``From:``/``Sent:`` header block) with everything
    after it. Interleaved answers are left whole, and so are forwards unless ``allow_forward``:
    ``(text, None)``. Pure."""
    lines = text.replace("\r\n", "\n").split("\n")
    n = len(lines)
    # Where the trailing run of quoted (">") or blank lines starts.
    tail = n
    while tail > 0 and (lines[tail - 1].lstrip().startswith(">") or not lines[tail - 1].strip()):
        tail -= 1
    candidates: list[int] = []
    if tail < n and _has_text([line.lstrip().lstrip(">") for line in lines[tail:]]):
        start = tail
        # An attribution just above the quote (after optional blank lines) belongs to it.
        j = start
        while j > 0 and not lines[j - 1].strip():
            j -= 1
        for span in (1, 2, 3):
            if j - span >= 0 and is_attribution(" ".join(lines[j - span : j])):
                start = j - span
                if _WROTE.match(lines[start].strip()) and start > 0 and lines[start - 1].strip():
                    start -= 1  # "On <date>, <who>" / "wrote:" wrapped before the verb
                # A wrapped attribution ("… Alice <" / "alice@example.org> wrote:") is one.
                for _ in range(2):
                    if start > 0 and lines[start - 1].strip() and (
                        lines[start - 1].rstrip().endswith(("<", ",", "(", '"', "&lt;"))
                        or re.match(r"^\S*@\S+>", lines[start].strip())
                    ):
                        start -= 1
                break
        candidates.append(start)
    for i, line in enumerate(lines):
        if _ORIGINAL_MESSAGE.match(line):
            candidates.append(i)
            break
        if _UNDERSCORES.match(line) and i + 1 < n and re.match(rf"^\s*\*?{_HEADER_FROM}\s*\*?\s*[:：]", "\n".join(lines[i + 1 : i + 3]).strip(), re.IGNORECASE):
            candidates.append(i)
            break
        if _HEADER_BLOCK.match("\n".join(lines[i : i + 5])) and i > 0:
            candidates.append(i)
            break
    for start in sorted(candidates):
        new, quoted = lines[:start], lines[start:]
        before = [line for line in new if line.strip()][-2:]
        if not allow_forward and any(is_forward_marker(line) for line in before + quoted[:1]):
            continue
        if _has_text(new) and _has_text(quoted):
            return "\n".join(new).rstrip(), "\n".join(quoted).strip("\n")
    return text, None


@dataclass
class _Event:
    kind: str  # "start", "end", "data"
    tag: str
    offset: int
    attrs: dict[str, str] = field(default_factory=dict)
    text: str = ""


class _Scanner(HTMLParser):
    """Records start tags, end tags and visible text with their offsets in the source."""

    def __init__(self, source: str) -> None:
        super().__init__(convert_charrefs=True)
        self.source = source
        self.line_starts = [0]
        for m in re.finditer("\n", source):
            self.line_starts.append(m.end())
        self.events: list[_Event] = []
        self.skip = 0

    def _offset(self) -> int:
        line, col = self.getpos()
        return self.line_starts[line - 1] + col

    def handle_starttag(self, tag: str, attrs: list[tuple[str, str | None]]) -> None:
        if tag == "body":
            self.skip = 0  # a <head> that was never closed
        if tag in _SKIP:
            self.skip += 1
        if self.skip:
            return
        self.events.append(_Event("start", tag, self._offset(), {k: v or "" for k, v in attrs}))

    def handle_startendtag(self, tag: str, attrs: list[tuple[str, str | None]]) -> None:
        if not self.skip:
            self.events.append(_Event("start", tag, self._offset(), {k: v or "" for k, v in attrs}))

    def handle_endtag(self, tag: str) -> None:
        if tag in _SKIP:
            self.skip = max(0, self.skip - 1)
            return
        if not self.skip:
            self.events.append(_Event("end", tag, self._offset()))

    def handle_data(self, data: str) -> None:
        if not self.skip and _VISIBLE.search(data):
            self.events.append(_Event("data", "", self._offset(), text=data))


_CONTAINER_CLASSES = {
    "gmail_quote", "gmail_quote_container", "yahoo_quoted", "protonmail_quote", "moz-cite-prefix",
    "zmail_extra", "tutanota_quote", "ms-outlook-mobile-reference-message",
}
_CONTAINER_IDS = {
    "divrplyfwdmsg", "appendonsend", "mail-editor-reference-message-container", "olk_src_body_section",
    "zwchr",
}


_MAX_EVENTS = 60_000


def _match_ends(events: list[_Event]) -> dict[int, int]:
    """Map each start tag's index to the index of the end tag that closes it (unclosed tags
    close at the end of the document)."""
    stacks: dict[str, list[int]] = {}
    ends: dict[int, int] = {}
    for k, e in enumerate(events):
        if e.kind == "start":
            stacks.setdefault(e.tag, []).append(k)
        elif e.kind == "end" and stacks.get(e.tag):
            ends[stacks[e.tag].pop()] = k
    return ends


def _is_visible(e: _Event) -> bool:
    return e.kind == "data" or (e.kind == "start" and e.tag == "img")


def _interleaved(events: list[_Event], ends: dict[int, int], start: int) -> bool:
    """Whether text outside blockquotes follows a blockquote that begins at or after ``start``
    (answers written between quoted paragraphs)."""
    k = start
    seen_quote = False
    while k < len(events):
        e = events[k]
        if e.kind == "start" and e.tag == "blockquote":
            seen_quote = True
            k = ends.get(k, len(events)) + 1
            continue
        if seen_quote and _is_visible(e):
            return True
        k += 1
    return False


def _block_start_before(events: list[_Event], index: int) -> int:
    """The index of the outermost start tag opened after the last text or end tag before
    ``index`` (so a cut there leaves no empty wrapper of the cut-off part)."""
    k = index
    while k > 0 and events[k - 1].kind == "start" and events[k - 1].tag not in ("body", "html", "br"):
        k -= 1
    return k


_INLINE = {"span", "font", "b", "strong", "i", "em", "u", "a", "o:p", "small", "big", "sup", "sub"}


def _text_block_start(events: list[_Event], index: int) -> int:
    """For the text event at ``index``: the first event of its line of text (since the previous
    block boundary or ``<br>``), including the wrapper tags opened just before it."""
    k = index
    while k > 0:
        prev = events[k - 1]
        if prev.kind in ("start", "end") and prev.tag not in _INLINE:
            break
        k -= 1
    return _block_start_before(events, k)


def _text_between(events: list[_Event], lo: int, hi: int) -> str:
    return " ".join(e.text for e in events[lo:hi] if e.kind == "data")


def split_html_quote(html: str, *, allow_forward: bool = False) -> tuple[str, str | None]:
    """Split reply HTML into (new part, quoted history) when the history is trailing.

    Recognises Gmail (``gmail_quote``), Yahoo, Proton, Thunderbird (``moz-cite-prefix`` then a
    cited blockquote), Apple Mail (``<blockquote type="cite">``), Outlook on the web and new
    Outlook (``divRplyFwdMsg``/``appendonsend``), Outlook desktop (a ``From:``/``Sent:`` header
    block), "-----Original Message-----" separators and a last blockquote, with the "On …
    wrote:" line before it. A blockquote followed by new text (interleaved answers) is not a
    trailing quote. Forwarded content is kept whole unless ``allow_forward``. The parts are
    cut from the source as is (tags may be left open or closed twice: sanitise each part
    afterwards). Returns ``(html, None)`` when there is nothing to fold. Pure; never raises.
    """
    if not _might_quote(html):
        return html, None
    try:
        scanner = _Scanner(html)
        scanner.feed(html)
        scanner.close()
    except Exception:
        return html, None
    events = scanner.events
    if len(events) > _MAX_EVENTS:
        return html, None
    cut = _find_cut(events, allow_forward)
    if cut is None:
        return html, None
    offset = events[cut].offset
    kept, quoted = html[:offset], html[offset:]
    if not _VISIBLE.search(_strip_tags(kept)) or not _VISIBLE.search(_strip_tags(quoted)):
        return html, None
    return kept, quoted


_QUOTE_HINTS = (
    "blockquote", "gmail_quote", "yahoo_quoted", "protonmail_quote", "moz-cite-prefix", "divrplyfwdmsg",
    "appendonsend", "mail-editor-reference", "olk_src_body", "original message", "_____", "&gt;",
)
_HEADER_HINT = re.compile(rf"(?is){_HEADER_FROM}\s*:.{{0,400}}?{_HEADER_SENT}\s*:")


def _might_quote(html: str) -> bool:
    lower = html.lower()
    return any(h in lower for h in _QUOTE_HINTS) or bool(_HEADER_HINT.search(lower))


def _quoted_text_suffix(events: list[_Event]) -> int | None:
    """Index of the first of the trailing text events that all start with ``>`` (quoting
    written as text, as old Hotmail and some webmails do), if there are any."""
    first: int | None = None
    for k in range(len(events) - 1, -1, -1):
        e = events[k]
        if e.kind == "start" and e.tag == "img":
            break
        if e.kind == "data":
            if not e.text.lstrip().startswith(">"):
                break
            first = k
    return first


def _with_attribution(events: list[_Event], start: int) -> int:
    """Move a cut back over an "On … wrote:" line just before it."""
    prev_text = next((i for i in range(start - 1, -1, -1) if events[i].kind == "data"), None)
    if prev_text is not None:
        block = _text_block_start(events, prev_text)
        if is_attribution(_text_between(events, block, start)):
            return block
    return start


def _find_cut(events: list[_Event], allow_forward: bool) -> int | None:
    ends = _match_ends(events)
    last_visible = max((k for k, e in enumerate(events) if _is_visible(e)), default=-1)
    text_quote = _quoted_text_suffix(events)
    candidate: int | None = None
    for k, e in enumerate(events):
        if k == text_quote:
            candidate = _with_attribution(events, _text_block_start(events, k))
            break
        if e.kind == "start":
            classes = set(e.attrs.get("class", "").lower().split())
            ident = e.attrs.get("id", "").lower()
            if classes & _CONTAINER_CLASSES or ident in _CONTAINER_IDS:
                if ident in _CONTAINER_IDS or not _interleaved(events, ends, k + 1):
                    candidate = _block_start_before(events, k)
                    break
            if e.tag == "blockquote" and ends.get(k, len(events)) >= last_visible:
                candidate = _with_attribution(events, _block_start_before(events, k))
                break
        elif e.kind == "data":
            stripped = e.text.strip()
            if _ORIGINAL_MESSAGE.match(stripped) or (_UNDERSCORES.match(stripped) and _next_text_is_from(events, k)):
                candidate = _text_block_start(events, k)
                break
            if re.match(rf"^\s*\*?{_HEADER_FROM}\s*[:：]", stripped, re.IGNORECASE):
                following = " ".join(x.text for x in events[k : k + 40] if x.kind == "data")
                if _HEADER_BLOCK_FLAT.match(following):
                    candidate = _text_block_start(events, k)
                    break
    if candidate is None:
        return None
    if not allow_forward and is_forward_marker(_text_between(events, candidate, len(events))):
        return None
    return candidate


def _next_text_is_from(events: list[_Event], index: int) -> bool:
    nxt = next((e for e in events[index + 1 :] if e.kind == "data"), None)
    return nxt is not None and bool(re.match(rf"^\s*{_HEADER_FROM}\s*[:：]", nxt.text, re.IGNORECASE))
