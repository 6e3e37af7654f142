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
(CJK runs among them), punctuation or whitespace. Such stretches are looked for only in a text that
holds a run of CANDIDATE characters without whitespace (found anchored at a run's start: linear),
inside those runs, and whitespace runs of CANDIDATE characters (a quick search first: whitespace
runs are short); around each, LONGEST_RUN characters on each
side are pre-tokenized with the tokenizer's own split, and the pre-tokens past LONGEST_RUN in them
are cut. The classes are supersets of the split's, so a stretch can be missed only where Python's
and the split's Unicode tables disagree beyond what `_stretches` adds (tested against the whole
text's pre-tokens on random texts of letters, CJK symbols, punctuation, control characters and
whitespace).
"""

from __future__ import annotations

import functools
import re
from collections.abc import Iterable, Iterator

LONGEST_RUN = 1024
CANDIDATE = LONGEST_RUN // 2
# The split's whitespace is Oniguruma's \s (the White_Space characters); Python's \s adds the
# separators \x1c-\x1f, which the split takes as punctuation. Python's own \s is several times faster
# than a class spelled out, so a text without those separators (nearly every one) is searched with it.
_SEPARATORS = "\x1c\x1d\x1e\x1f"
_SPACE = "\t\n\x0b\x0c\r \x85\xa0\u1680\u2000-\u200a\u2028\u2029\u202f\u205f\u3000"
_LONG_RUN = re.compile(rf"(?<!\S)\S{{{CANDIDATE},}}")
_LONG_RUN_BESIDE_SEPARATORS = re.compile(rf"(?<![^{_SPACE}])[^{_SPACE}]{{{CANDIDATE},}}")
_LONG_WHITESPACE = re.compile(rf"(?<![{_SPACE}])[{_SPACE}]{{{CANDIDATE},}}")
# (tried at a run's start only: unanchored, a run of k spaces cost k²/2 steps, 591 ms a MB of runs of 511)
_ANY_LONG_WHITESPACE = re.compile(rf"\s(?<!\s\s)\s{{{CANDIDATE - 1}}}")


@functools.cache
def _stretches() -> tuple[re.Pattern, re.Pattern]:
    r"""Stretches of CANDIDATE letters or of CANDIDATE punctuation marks, as the split's classes draw
    them, each a superset: the letters are `re`'s (\w but digits and _) and every character the
    split takes as a letter that `re` does not know as one (its CJK class's symbols, Kangxi radicals
    and circled katakana; letters newer than Python's Unicode tables), found once with the `regex`
    module; the marks, everything but \w and the split's whitespace (those symbols and newer letters
    among them, as \W)."""
    from llmkit.data.tokenizer import CJK_CHARACTERS

    letter = re.compile(r"[^\W\d_]")
    extra = [c for c in _split_characters(rf"[\p{{L}}{CJK_CHARACTERS}]") if not letter.match(c)]
    ranges, start = [], None
    for previous, c in zip([None, *extra], [*extra, None]):
        if start is None:
            start = c
        elif c is None or ord(c) != ord(previous) + 1:
            ranges.append(re.escape(start) if start == previous else f"{re.escape(start)}-{re.escape(previous)}")
            start = c
    known = "".join(ranges)
    letters = rf"(?<![^\W\d_])(?<![{known}])(?:[^\W\d_]|[{known}]){{{CANDIDATE},}}" if known else \
        rf"(?<![^\W\d_])[^\W\d_]{{{CANDIDATE},}}"
    marks = rf"(?<![^\w{_SPACE}])(?<!_)(?:[^\w{_SPACE}]|_){{{CANDIDATE},}}"
    # (two searches: a Kangxi radical is both, and one alternation's match would hide the other's stretch)
    return re.compile(letters), re.compile(marks)


@functools.cache
def _numbers_newer_than_python() -> frozenset[str]:
    """Characters the split takes as numbers (\\p{N}) that Python's tables do not (Kawi and Nag Mundari digits)."""
    return frozenset(c for c in _split_characters(r"\p{N}") if not c.isnumeric())


def _split_characters(character_class: str) -> list[str]:
    """The characters past ASCII in a class of the split's (Oniguruma's Unicode tables), in order, read
    with the `regex` module, whose tables are as recent (Python's `re` knows Unicode 14 only)."""
    import regex

    return regex.findall(character_class, _every_character())


@functools.cache
def _every_character() -> str:
    return "".join(chr(c) for c in range(0x80, 0x40000) if not 0xD800 <= c < 0xE000)


def _a_number(character: str) -> bool:
    return character.isnumeric() or character in _numbers_newer_than_python()


def _long_pretokens(text: str, split) -> list[tuple[int, int]]:
    """(start, end) of every pre-token of `text` longer than LONGEST_RUN characters."""
    runs = _LONG_RUN_BESIDE_SEPARATORS if any(c in text for c in _SEPARATORS) else _LONG_RUN
    candidates = [stretch.span() for run in runs.finditer(text) for kind in _stretches()
                  for stretch in kind.finditer(text, run.start(), run.end())]
    if _ANY_LONG_WHITESPACE.search(text):
        candidates += [run.span() for run in _LONG_WHITESPACE.finditer(text)]
    if not candidates:
        return []
    regions: list[list[int]] = []  # the candidates widened by LONGEST_RUN on each side, merged
    for first, end in sorted(candidates):
        first, end = max(0, first - LONGEST_RUN), min(len(text), end + LONGEST_RUN)
        # numbers split 3 at a time from their run's start, as in the text (back to the previous region at most)
        while first > (regions[-1][1] if regions else 0) and _a_number(text[first - 1]):
            first -= 1
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
    from llmkit.data.tokenizer import split_pre_tokenizer

    split = split_pre_tokenizer()
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
