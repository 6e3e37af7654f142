"""Unicode repair, normalisation, whitespace cleanup and HTML stripping.

Unicode repair is ftfy's (mojibake such as "donÃ¢â‚¬â„¢t" -> "don’t", surrogates, C1 controls),
configured to leave alone what is not broken: curly quotes stay curly, and full-width
characters stay full-width, because Chinese punctuation (，。！) is full-width by design.
"""

from __future__ import annotations

import re
import unicodedata
from html.parser import HTMLParser

import ftfy

_FTFY = ftfy.TextFixerConfig(
    unescape_html=False,  # --strip-html decides about markup; a literal "&amp;" in prose is left alone
    uncurl_quotes=False,
    fix_latin_ligatures=False,
    fix_character_width=False,
    explain=False,
    normalization=None,  # done below with the configured form
)

# A terminal's escape sequences (colours, cursor moves: "\x1b[31m"): removed whole, as ftfy removes
# them from the text it repairs (non-ASCII), not just their ESC (which left "[31m" in ASCII text).
_TERMINAL_ESCAPE = re.compile("\x1b\\[[0-?]*[ -/]*[@-~]")
# C0/C1 controls except tab and newline, plus DEL; and invisible characters that only get in the way.
_CONTROL = re.compile("[\x00-\x08\x0b\x0c\x0e-\x1f\x7f-\x9f\u200b\u2060\ufeff]")
_ODD_SPACE = re.compile("[\u00a0\u1680\u2000-\u200a\u202f\u205f]")
# (form feed and vertical tab break lines or pages: removed as controls, they glued words together)
_LINE_BREAK = re.compile("\r\n?|[\u2028\u2029\x85\x0b\x0c]")
_TRAILING_SPACE = re.compile("[ \t]+\n")
_EXTRA_BLANK_LINES = re.compile("\n{3,}")


def fix_unicode(text: str, normalization: str = "NFC") -> str:
    """ftfy repair followed by Unicode normalisation; ASCII text can hold neither problem."""
    if text.isascii():
        return text
    # ftfy unifies line breaks but deletes a vertical tab as a control character, gluing the words
    # it parted ("one\vtwo" -> "onetwo"); here it breaks the line, as cleanup has it in ASCII text.
    # (U+0085 stays ftfy's: in text that needs repair it is the windows-1252 ellipsis, mojibake.)
    fixed = ftfy.fix_text(text.replace("\x0b", "\n"), _FTFY)
    return unicodedata.normalize(normalization, fixed)


def cleanup(text: str) -> str:
    """Unix line breaks, no control characters, plain spaces, no trailing blanks or runs of empty lines."""
    text = _LINE_BREAK.sub("\n", text)
    if not text.isascii():
        text = _ODD_SPACE.sub(" ", text)
    if "\x1b" in text:
        text = _TERMINAL_ESCAPE.sub("", text)
    text = _CONTROL.sub("", text)
    text = _TRAILING_SPACE.sub("\n", text)
    text = _EXTRA_BLANK_LINES.sub("\n\n", text)
    return text.strip()


_BLOCK_TAGS = frozenset(
    "address article aside blockquote br dd div dl dt figcaption figure footer form h1 h2 h3 h4 h5 h6 "
    "header hr li main nav ol p pre section table td th tr ul".split()
)
_SKIP_TAGS = frozenset({"script", "style", "noscript", "template"})
# What <head> may hold: any other start tag (or <body>) ends it, as in a browser, so a page that
# leaves out </head> (valid HTML5) keeps its body.
_HEAD_CONTENT = frozenset({"title", "meta", "link", "base", "style", "script", "noscript", "template"})


_PREFORMATTED_TAGS = frozenset({"pre", "textarea"})


class _TextExtractor(HTMLParser):
    def __init__(self) -> None:
        super().__init__(convert_charrefs=True)  # entities decoded here, once: "&amp;lt;" is the text "&lt;"
        self.parts: list[tuple[str, bool]] = []  # (text, inside <pre>: its spacing is the content)
        self.skipping = 0
        self.in_head = False
        self.in_title = False
        self.preformatted = 0

    def handle_starttag(self, tag, attrs):
        if tag == "head":
            self.in_head = True
            return
        if self.in_head and tag not in _HEAD_CONTENT:
            self.in_head = False
        if tag == "title":
            self.in_title = True
        if tag in _SKIP_TAGS:
            self.skipping += 1
        elif tag in _BLOCK_TAGS:
            self.parts.append(("\n", False))
        if tag in _PREFORMATTED_TAGS:
            self.preformatted += 1

    def handle_startendtag(self, tag, attrs):
        # <br/> is one break as <br> is (the parser's default runs the start and the end handler:
        # two breaks, a paragraph); a self-closed <script/> holds nothing to skip
        if tag not in _SKIP_TAGS:
            self.handle_starttag(tag, attrs)

    def handle_endtag(self, tag):
        if tag == "head":
            self.in_head = False
            return
        if tag == "title":
            self.in_title = False
        if tag in _SKIP_TAGS:
            self.skipping = max(0, self.skipping - 1)
        elif tag in _BLOCK_TAGS:
            self.parts.append(("\n", False))
        if tag in _PREFORMATTED_TAGS:
            self.preformatted = max(0, self.preformatted - 1)

    def handle_data(self, data):
        if self.in_head and not self.in_title and not self.skipping and data.strip():
            self.in_head = False  # text outside the title starts the body, as in a browser
        if not self.skipping and not self.in_head:
            self.parts.append((data, self.preformatted > 0))


# a tag, an entity, a comment, a declaration (<!DOCTYPE html>) or a processing instruction (<?xml ...?>)
_LOOKS_LIKE_HTML = re.compile(r"<\s*/?\s*[a-zA-Z][a-zA-Z0-9]*(\s[^<>]*)?/?\s*>|&(#\d+|#x[0-9a-fA-F]+|[a-zA-Z]+);"
                              r"|<!--|<![a-zA-Z]|<\?[a-zA-Z]")
_SPACE_RUN = re.compile("[ \t]+")


# the files whose documents --strip-html strips: pages, and records (a crawl's); #2: a repeated name's label
_PAGE_FILE = re.compile(r"\.x?html?(\.(gz|zst|zstd))?(#\d+)?$", re.IGNORECASE)
_RECORDS_FILE = re.compile(r"\.(jsonl|ndjson|json|csv|tsv|parquet)(\.(gz|zst|zstd))?(#\d+)?$", re.IGNORECASE)
_DATA_SET = re.compile(r"(^|/)dataset:")  # (after a cleaned corpus's name, where one carries its documents' sources)


def may_hold_html(source: str) -> bool:
    """--strip-html's documents: an .html/.htm file's, a record's (a crawl's, a data set's), not any
    other file's (by its source label; every other file is read as plain text), whose angle brackets
    are its own text: `std::vector<int>` in a .cpp, README or .markdown file, a Markdown `<div>` in
    backticks (a docs site of .md and .html pages)."""
    return bool(is_page(source) or _RECORDS_FILE.search(source) or _DATA_SET.search(source))


def is_page(source: str) -> bool:
    """An .html/.htm file's label (its markup kept unless --strip-html)."""
    return bool(_PAGE_FILE.search(source))


def strip_html(text: str) -> str:
    """Visible text of an HTML fragment (stdlib parser): tags and script/style bodies removed, spaces
    collapsed as a browser does, except inside <pre> (code keeps its indentation)."""
    if not _LOOKS_LIKE_HTML.search(text):
        return text
    parser = _TextExtractor()
    parser.feed(text)
    parser.close()
    out: list[str] = []
    flowing: list[str] = []
    for part, preformatted in [*parser.parts, ("", True)]:  # (the sentinel flushes the last run of flowing text)
        if not preformatted:
            flowing.append(part)
            continue
        if flowing:
            out.append("\n".join(_SPACE_RUN.sub(" ", line).strip() for line in "".join(flowing).split("\n")))
            flowing = []
        out.append(part)
    return "".join(out)
