"""Document filters. Each returns None to keep a document or a reason code to drop it.

The web rules follow the published pipelines as datatrove implements them (docs/clean.md lists
every threshold and its source), with one change so they make sense beyond English: "words"
come from `words.split_words`, where each character of an unspaced script (Chinese, Japanese,
Thai) counts as one word, and rules that only mean something for spaced, English text (mean
word length, English stop words) are skipped for documents written mainly in such a script (the
mean word length for Korean too, whose syllable blocks make short words).
"""

from __future__ import annotations

import re
from functools import cached_property
from typing import Optional

import numpy as np

from llmkit.corpus.config import CleanConfig
from llmkit.corpus.words import hangul_share, split_words, unspaced_share

Reason = Optional[str]

# Control characters that never occur in text (tab, newline, CR, FF, VT excluded; and the ESC that
# opens a terminal escape sequence, which cleanup removes: a coloured log line is text).
_BINARY_CHARS = re.compile("[\x00-\x08\x0e-\x1a\x1c-\x1f]|\x1b(?!\\[)")
_GARBLED_CHARS = re.compile("[\ufffd\ue000-\uf8ff\U000f0000-\U0010ffff\ud800-\udfff]")


def binary_reason(raw: str, cfg: CleanConfig) -> Reason:
    if not raw:
        return None
    found = len(_BINARY_CHARS.findall(raw))
    return "binary" if found and found / len(raw) > cfg.max_binary_ratio else None


def garbled_reason(text: str, cfg: CleanConfig) -> Reason:
    if text.isascii():
        return None
    found = len(_GARBLED_CHARS.findall(text))
    return "garbled" if found / len(text) > cfg.max_garbled_ratio else None


class DocView:
    """A document with the splits the rules share, each computed once."""

    def __init__(self, text: str, language: str | None = None):
        self.text = text
        self.language = language

    @cached_property
    def unspaced(self) -> bool:
        return unspaced_share(self.text) > 0.3

    @cached_property
    def hangul(self) -> bool:
        return hangul_share(self.text) > 0.3

    @cached_property
    def words(self) -> list[str]:
        return split_words(self.text)

    @cached_property
    def lines(self) -> list[str]:
        return self.text.split("\n")


# ---------------------------------------------------------------- Gopher quality (Rae et al. 2021, App. A)
_PUNCT_ONLY = re.compile(r"^[\W_]+$")
_HAS_LETTER = re.compile(r"[^\W\d_]")
STOP_WORDS = frozenset({"the", "be", "to", "of", "and", "that", "have", "with"})
# A stop word standing as a word of its own: not inside a word, nor joined to one by a hyphen or an
# apostrophe ("up-to-date", "o'the", Unicode's hyphens and apostrophes too) or by an invisible character
# (a soft hyphen: "the\u00adory"); beside a dash, a slash or other punctuation it is one ("tired--and",
# "tired—and", "and/or", "the,"). One pass over the text, no backtracking whatever its words' length.
_JOINER = "['’‘`＇\\-\u2010\u2011]"
_INVISIBLE = "[\u00ad\u200c\u200d\u2060\ufeff]"  # (a zero-width space, \u200b, is a break between words)
_STOP_WORD = re.compile(rf"(?<!\w)(?<!\w{_JOINER})(?<!\w{_INVISIBLE})(?:{'|'.join(sorted(STOP_WORDS))})"
                        rf"(?!\w)(?!{_JOINER}\w)(?!{_INVISIBLE}\w)")
_BULLETS = ("•", "-", "*", "·", "‣", "▪", "●", "◦")


def gopher_quality(doc: DocView, cfg: CleanConfig) -> Reason:
    words = doc.words
    if not words:
        return "gopher_short_doc"
    content_words = [w for w in words if not _PUNCT_ONLY.match(w)]
    n = len(content_words)
    if n < cfg.min_words or n == 0:  # (punctuation alone: no word to measure, whatever --min-words 0 allows)
        return "gopher_short_doc"
    if n > cfg.max_words:
        return "gopher_long_doc"
    # One character per word makes the mean length meaningless for CJK, and a Hangul block holds two or
    # three letters: everyday Korean averages about 2.4 blocks a word, under the English bound of 3
    if not doc.unspaced and not doc.hangul:
        mean_length = sum(len(w) for w in content_words) / n
        if not cfg.min_mean_word_length <= mean_length <= cfg.max_mean_word_length:
            return "gopher_mean_word_length"
    text = doc.text
    if text.count("#") / len(words) > cfg.max_symbol_word_ratio:
        return "gopher_hash_ratio"
    if (text.count("...") + text.count("…")) / len(words) > cfg.max_symbol_word_ratio:
        return "gopher_ellipsis_ratio"
    lines = [line for line in doc.lines if line.strip()]
    if sum(line.lstrip().startswith(_BULLETS) for line in lines) / len(lines) > cfg.max_bullet_lines_ratio:
        return "gopher_bullet_lines"
    if sum(line.rstrip().endswith(("...", "…")) for line in lines) / len(lines) > cfg.max_ellipsis_lines_ratio:
        return "gopher_ellipsis_lines"
    # Over whitespace tokens for an unspaced script, as Gopher counts: one character a word made each
    # punctuation mark and vowel sign a "word" without a letter (clean Chinese prose fell below 0.8).
    tokens = text.split() if doc.unspaced else words
    if sum(1 for w in tokens if _HAS_LETTER.search(w)) / max(len(tokens), 1) < cfg.min_alpha_words_ratio:
        return "gopher_alpha_words"
    # The stop words are English: apply them to English or unidentified spaced text only.
    if cfg.min_stop_words and not doc.unspaced and doc.language in (None, "en"):
        if len(set(_STOP_WORD.findall(text.lower()))) < cfg.min_stop_words:
            return "gopher_stop_words"
    return None


# ---------------------------------------------------------------- Gopher repetition (Table A1)
_PARAGRAPH_SPLIT = re.compile(r"\n{2,}")
_LINE_SPLIT = re.compile(r"\n+")


def _duplicates(items: list[str]) -> tuple[int, int]:
    """(number of repeated elements, characters in them), counting every occurrence after the first."""
    seen: set[str] = set()
    count = chars = 0
    for item in items:
        if item in seen:
            count += 1
            chars += len(item)
        else:
            seen.add(item)
    return count, chars


_GRAM_MULTIPLIERS = np.random.default_rng(0).integers(1, 2**63, size=64, dtype=np.uint64) | np.uint64(1)  # n <= 64


class _Grams:
    """Word n-grams as 64-bit hashes (NumPy), so repetition statistics need no tuple per n-gram.

    Python's `hash` is salted per process, which is fine here: the statistics only compare
    n-grams of one document with each other, within one call."""

    def __init__(self, words: list[str]):
        self.ids = np.fromiter(map(hash, words), dtype=np.int64, count=len(words)).view(np.uint64)
        self.chars = np.concatenate(([0], np.cumsum([len(w) for w in words], dtype=np.int64)))

    def hashes(self, n: int) -> np.ndarray:
        count = len(self.ids) - n + 1
        if count <= 0:
            return np.empty(0, dtype=np.uint64)
        out = np.zeros(count, dtype=np.uint64)
        for k in range(n):
            out += self.ids[k : k + count] * _GRAM_MULTIPLIERS[k]  # wraps mod 2^64, as intended
        return out

    def gram_chars(self, start: int, n: int) -> int:
        return int(self.chars[start + n] - self.chars[start])

    def top_chars(self, n: int, separators: bool = True) -> int:
        """Characters in the most frequent n-gram times its count (0 unless it repeats); with
        `separators`, the n - 1 spaces between its words too, as datatrove counts the n-gram joined
        by spaces (text written without spaces between words has none to count)."""
        hashes = self.hashes(n)
        if len(hashes) == 0:
            return 0
        _, first, counts = np.unique(hashes, return_index=True, return_counts=True)
        top = int(counts.max())
        # An n-gram seen once is not repetition (datatrove counts it, which drops short documents).
        if top < 2:
            return 0
        start = int(first[counts == top].min())  # ties: the earliest n-gram, as Counter.most_common does
        return (self.gram_chars(start, n) + (n - 1 if separators else 0)) * top

    def duplicate_chars(self, n: int) -> int:
        """Characters covered by n-grams seen before, not double-counting overlaps (as in datatrove)."""
        hashes = self.hashes(n)
        if len(np.unique(hashes)) == len(hashes):
            return 0
        seen: set[int] = set()
        chars = i = 0
        values = hashes.tolist()
        while i < len(values):
            if values[i] in seen:
                chars += self.gram_chars(i, n)
                i += n
            else:
                seen.add(values[i])
                i += 1
        return chars


def gopher_repetition(doc: DocView, cfg: CleanConfig) -> Reason:
    text = doc.text
    length = len(text)
    paragraphs = _PARAGRAPH_SPLIT.split(text)
    count, chars = _duplicates(paragraphs)
    if count / len(paragraphs) > cfg.max_dup_para_frac:
        return "gopher_dup_para_frac"
    if chars / length > cfg.max_dup_para_char_frac:
        return "gopher_dup_para_char_frac"
    lines = _LINE_SPLIT.split(text)
    count, chars = _duplicates(lines)
    if count / len(lines) > cfg.max_dup_line_frac:
        return "gopher_dup_line_frac"
    if chars / length > cfg.max_dup_line_char_frac:
        return "gopher_dup_line_char_frac"
    grams = _Grams(doc.words)
    # A Chinese word is about two characters: n words of the rule are 2n characters there.
    scale = 2 if doc.unspaced else 1
    for n, limit in zip((2, 3, 4), cfg.max_top_ngram_char_frac):
        if grams.top_chars(n * scale, separators=not doc.unspaced) / length > limit:
            return f"gopher_top_{n}gram"
    for n, limit in zip(range(5, 11), cfg.max_dup_ngram_char_frac):
        duplicated = grams.duplicate_chars(n * scale)
        if duplicated / length > limit:
            return f"gopher_dup_{n}gram"
        if duplicated == 0:  # no repeated n-gram means no repeated longer one either
            break
    return None


# ---------------------------------------------------------------- C4 (Raffel et al. 2020, §2.2)
_CITATION = re.compile(r"\[\d*\]|\[edit\]|\[citation needed\]")
# Sentence ends of other scripts too: Devanagari's danda, Arabic's question mark, Urdu's full stop,
# Armenian, Ethiopic, Myanmar, Khmer, Tibetan, Syriac, and full- and half-width stops (datatrove's
# TERMINAL_PUNCTUATION has all but Tibetan's shad; without them a clean Hindi or Khmer text had no
# sentence at all).
_OTHER_ENDS = "।॥؟۔։።፧။។៕།܂．｡"
_TERMINAL = (".", "?", "!", '"', "'", "。", "？", "！", "”", "」", "』", *_OTHER_ENDS)
# A closing quote or bracket after a CJK mark ends the sentence with it: "他说：“你好。”" is one sentence
# (the ” was counted as a second). Possessive, each run of marks tried once: a line of 200 words of 999
# "!" took seconds backtracking.
_CLOSERS = "\"'”’」』）)\\]"
_SENTENCE_END = re.compile(f"(?<![.!?])[.!?]++(?=\\s|$)|[。！？{_OTHER_ENDS}]++[{_CLOSERS}]*+")
_POLICY = ("terms of use", "privacy policy", "cookie policy", "uses cookies", "use of cookies", "use cookies")


def _sentences(line: str) -> int:
    ends = list(_SENTENCE_END.finditer(line))
    tail = line[ends[-1].end() :].strip() if ends else line.strip()
    return len(ends) + (1 if tail else 0)


def c4(doc: DocView, cfg: CleanConfig) -> tuple[str, Reason]:
    """C4's line rules: drops lines (returning the shortened text) or the whole document."""
    kept: list[str] = []
    sentences = 0
    for line in doc.lines:
        line = line.strip()
        words = split_words(line)
        too_long = 0 < cfg.c4_max_word_length < len(line)  # only a long line can hold a long word
        if too_long and max(map(len, words)) > cfg.c4_max_word_length:
            continue
        if cfg.c4_remove_citations:
            line = _CITATION.sub("", line)
        if cfg.c4_terminal_punct and (not line.endswith(_TERMINAL) or line.endswith("...")):
            continue
        if len(words) < cfg.c4_min_words_per_line:
            continue
        lowered = line.lower()
        if cfg.c4_lorem_ipsum and "lorem ipsum" in lowered:
            return doc.text, "c4_lorem_ipsum"
        if cfg.c4_javascript and "javascript" in lowered:
            continue
        if cfg.c4_curly_bracket and "{" in line:
            return doc.text, "c4_curly_bracket"
        if cfg.c4_policy and any(p in lowered for p in _POLICY):
            continue
        sentences += _sentences(line)
        kept.append(line)
    if sentences < cfg.c4_min_sentences:
        return doc.text, "c4_too_few_sentences"
    return "\n".join(kept).strip(), None


# ---------------------------------------------------------------- FineWeb (Penedo et al. 2024)
_FINEWEB_STOP = _TERMINAL + (";", ":", "…", "；", "：")


def fineweb(doc: DocView, cfg: CleanConfig) -> Reason:
    lines = [line for line in doc.lines if line.strip()]
    if not lines:
        return "empty"
    if sum(line.endswith(_FINEWEB_STOP) for line in lines) / len(lines) < cfg.min_line_punct_ratio:
        return "fineweb_line_punct"
    # A character of an unspaced script carries about as much as three Latin ones (docs/clean.md).
    short = cfg.short_line_length // 3 if doc.unspaced else cfg.short_line_length
    if sum(len(line) <= short for line in lines) / len(lines) > cfg.max_short_line_ratio:
        return "fineweb_short_lines"
    body = len(doc.text) - doc.text.count("\n")
    if body and _duplicates(lines)[1] / body > cfg.max_char_dup_ratio:
        return "fineweb_char_dup"
    if doc.words and doc.text.count("\n") / len(doc.words) > cfg.max_newline_word_ratio:
        return "fineweb_list_ratio"
    return None
