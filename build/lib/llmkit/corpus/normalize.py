"""Unicode repair, normalisation, whitespace cleanup and HTML stripping.

Unicode repair is ftfy's (mojibake such as "donÃ¢â‚¬â„¢t" -> "don’t", surrogates, C1 controls),
configured to leave alone what is not broken: curly quotes stay curly, and full-width
characters stay full-width, because Chinese punctuation (，。！) is full-width by design.
"""

from __future__ import annotations

import html
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

# C0/C1 controls except tab and newline, plus DEL; and invisible characters that only get in the way.
_CONTROL = re.compile("[\x00-\x08\x0b\x0c\x0e-\x1f\x7f-\x9f\u200b\u2060\ufeff]")
_ODD_SPACE = re.compile("[\u00a0\u1680\u2000-\u200a\u202f\u205f]")
_LINE_BREAK = re.compile("\r\n?|[\u2028\u2029\x85]")
_TRAILING_SPACE = re.compile("[ \t]+\n")
_EXTRA_BLANK_LINES = re.compile("\n{3,}")


def fix_unicode(text: str, normalization: str = "NFC") -> str:
    """ftfy repair followed by Unicode normalisation; ASCII text can hold neither problem."""
    if text.isascii():
        return text
    fixed = ftfy.fix_text(text, _FTFY)
    return unicodedata.normalize(normalization, fixed)


def cleanup(text: str) -> str:
    """Unix line breaks, no control characters, plain spaces, no trailing blanks or runs of empty lines."""
    text = _LINE_BREAK.sub("\n", text)
    if not text.isascii():
        text = _ODD_SPACE.sub(" ", text)
    text = _CONTROL.sub("", text)
    text = _TRAILING_SPACE.sub("\n", text)
    text = _EXTRA_BLANK_LINES.sub("\n\n", text)
    return text.strip()


_BLOCK_TAGS = frozenset(
    "address article aside blockquote br dd div dl dt figcaption figure footer form h1 h2 h3 h4 h5 h6 "
    "header hr li main nav ol p pre section table td th tr ul".split()
)
_SKIP_TAGS = frozenset({"script", "style", "noscript", "template", "head"})


class _TextExtractor(HTMLParser):
    def __init__(self) -> None:
        super().__init__(convert_charrefs=True)
        self.parts: list[str] = []
        self.skipping = 0

    def handle_starttag(self, tag, attrs):
        if tag in _SKIP_TAGS:
            self.skipping += 1
        elif tag in _BLOCK_TAGS:
            self.parts.append("\n")

    def handle_endtag(self, tag):
        if tag in _SKIP_TAGS:
            self.skipping = max(0, self.skipping - 1)
        elif tag in _BLOCK_TAGS:
            self.parts.append("\n")

    def handle_data(self, data):
        if not self.skipping:
            self.parts.append(data)


_LOOKS_LIKE_HTML = re.compile(r"<\s*/?\s*[a-zA-Z][a-zA-Z0-9]*(\s[^<>]*)?/?\s*>|&(#\d+|#x[0-9a-fA-F]+|[a-zA-Z]+);")
_SPACE_RUN = re.compile("[ \t]+")


def strip_html(text: str) -> str:
    """Visible text of an HTML fragment (stdlib parser): tags and script/style bodies removed."""
    if not _LOOKS_LIKE_HTML.search(text):
        return text
    parser = _TextExtractor()
    parser.feed(text)
    parser.close()
    joined = html.unescape("".join(parser.parts))
    lines = (_SPACE_RUN.sub(" ", line).strip() for line in joined.split("\n"))
    return "\n".join(lines)
