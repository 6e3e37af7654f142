"""Cutting the pre-tokens that BPE training cannot afford, and only those.

BPE training time grows with the square of a pre-token's length (each merge rewrites every word
that holds the pair, whole): one 300,000-letter run without a space took 127 s, a 3 MB one did not
finish in 11 minutes, and 200,000 blank lines took 21 s. Every pre-token of more than LONGEST_RUN
characters is therefore cut into pieces of LONGEST_RUN from its start, each piece a text of its
own; no real word is that long, and a text without such a pre-token is given to the trainer
unchanged, so it trains as raw `tokenizers` does (Chinese prose runs for thousands of characters
between spaces, in pre-tokens of a few: until 2026-12-05 every run of 1,024 characters without a
space was cut, which moved the merges' order from the 316th on).

Finding them without pre-tokenizing every text (a Python list of every pre-token: 11 s for 3 MB of
minified code): a pre-token that long holds a stretch of CANDIDATE characters of one class, letters
(CJK runs among them), punctuation or whitespace. Such stretches are looked for only inside runs
without a space of CANDIDATE characters (the fast search, anchored at a run's start: about 20 ms a
MB) and in whitespace runs where a text holds 64 of one whitespace character (a run mixing " \\n"
pairs escapes); around each, LONGEST_RUN characters on each side are pre-tokenized with the
tokenizer's own split, and the pre-tokens past LONGEST_RUN in them are cut.
"""

from __future__ import annotations

import functools
import re
from collections.abc import Iterable, Iterator

LONGEST_RUN = 1024
CANDIDATE = LONGEST_RUN // 2
_LONG_RUN = re.compile(rf"(?<!\S)\S{{{CANDIDATE},}}")
_LONG_WHITESPACE = re.compile(rf"(?<!\s)\s{{{CANDIDATE},}}")
_WHITESPACE_HINTS = tuple(c * 64 for c in " \n\t\r\u3000\xa0")


@functools.cache
def _stretches() -> re.Pattern:
    """Stretches of CANDIDATE letters or of CANDIDATE punctuation marks, as the split's classes draw
    them: its CJK class (Han, Hiragana, Katakana) also holds symbols (Kangxi radicals, circled
    katakana) and characters newer than Python's Unicode tables, which `re`'s \\w leaves out; they
    are found once with the `regex` module and added to the letters."""
    import regex

    from llmkit.data.tokenizer import CJK_CHARACTERS

    every = "".join(chr(c) for c in range(0x2000, 0x40000) if not 0xD800 <= c < 0xE000)
    letter = re.compile(r"[^\W\d_]")
    extra = [c for c in regex.findall(f"[{CJK_CHARACTERS}]", every) if not letter.match(c)]
    ranges, start = [], None
    for previous, c in zip([None, *extra], [*extra, None]):
        if start is None:
            start = c
        elif c is None or ord(c) != ord(previous) + 1:
            ranges.append(re.escape(start) if start == previous else f"{re.escape(start)}-{re.escape(previous)}")
            start = c
    cjk = "".join(ranges)
    letters = rf"(?<![^\W\d_])(?<![{cjk}])(?:[^\W\d_]|[{cjk}]){{{CANDIDATE},}}" if cjk else \
        rf"(?<![^\W\d_])[^\W\d_]{{{CANDIDATE},}}"
    marks = rf"(?<![^\w\s{cjk}])(?<!_)(?:[^\w\s{cjk}]|_){{{CANDIDATE},}}"
    return re.compile(f"{letters}|{marks}")


def _long_pretokens(text: str, split) -> list[tuple[int, int]]:
    """(start, end) of every pre-token of `text` longer than LONGEST_RUN characters."""
    candidates = [stretch.span() for run in _LONG_RUN.finditer(text)
                  for stretch in _stretches().finditer(text, run.start(), run.end())]
    if any(hint in text for hint in _WHITESPACE_HINTS):
        candidates += [run.span() for run in _LONG_WHITESPACE.finditer(text)]
    regions: list[list[int]] = []  # the candidates widened by LONGEST_RUN on each side, merged
    for first, end in sorted(candidates):
        first, end = max(0, first - LONGEST_RUN), min(len(text), end + LONGEST_RUN)
        if regions and first <= regions[-1][1]:
            regions[-1][1] = max(regions[-1][1], end)
        else:
            regions.append([first, end])
    found = []
    for first, end in regions:
        for _, (a, b) in split.pre_tokenize_str(text[first:end]):  # (offsets in characters)
            # a pre-token at a region's inner edge may go on outside it: never one that long (see the module)
            inside = (a > 0 or first == 0) and (b < end - first or end == len(text))
            if b - a > LONGEST_RUN and inside:
                found.append((first + a, first + b))
    return found


def cut_long_pretokens(texts: Iterable[str]) -> Iterator[str]:
    """The training texts, every pre-token of over LONGEST_RUN characters cut into such pieces."""
    from tokenizers import Regex, pre_tokenizers

    from llmkit.data.tokenizer import SPLIT_PATTERN

    split = pre_tokenizers.Split(Regex(SPLIT_PATTERN), behavior="isolated", invert=False)
    try:
        for text in texts:
            long = _long_pretokens(text, split) if len(text) > LONGEST_RUN else []
            start = 0
            for first, end in long:
                for cut in range(first + LONGEST_RUN, end, LONGEST_RUN):
                    yield text[start:cut]
                    start = cut
            yield text[start:] if start else text
    finally:  # closed early (a stop): the reader closes too, whoever else holds it (its workers stop now)
        getattr(texts, "close", lambda: None)()
