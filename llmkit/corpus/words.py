"""Splitting text into words in a way that also works for scripts written without spaces.

Chinese, Japanese, Thai and similar scripts do not separate words with spaces; counting
whitespace tokens would make a whole Chinese paragraph one "word". Here every character of
such a script counts as one word (a standard choice for CJK n-gram statistics), while text in
spaced scripts is split on whitespace. Rules written in words (Gopher's 50-word minimum,
C4's 3 words per line, MinHash word 5-grams) then behave sensibly on both.
"""

from __future__ import annotations

import re

import regex

# Han (incl. extensions A and compatibility), kana, Thai, Lao, Tibetan, Myanmar, Khmer.
_UNSPACED_CLASS = (
    "\u3040-\u30ff\u31f0-\u31ff\u3400-\u4dbf\u4e00-\u9fff\uf900-\ufaff"
    "\u0e00-\u0e7f\u0e80-\u0eff\u0f00-\u0fff\u1000-\u109f\u1780-\u17ff\U00020000-\U0002fa1f"
)
UNSPACED_CHAR = re.compile(f"[{_UNSPACED_CLASS}]")
_WORD_TOKEN = re.compile(f"[{_UNSPACED_CLASS}]|[^\\s{_UNSPACED_CLASS}]+")
# Shingle tokens ignore case and punctuation so that trivial edits do not hide a duplicate. A word is a
# letter or number (`re`'s \w but "_") followed by letters, numbers, combining marks and joiners: `re`
# ended a word at each mark, so Devanagari's vowel signs, Arabic's harakat and NFD accents were dropped
# and "हिन्दी" shingled as ह न द, vowel-blind; a mark or joiner alone (an emoji's variation selector or
# ZWJ) is no word, or "❤️" and "❤" made two documents.
_SHINGLE_TOKEN = regex.compile(
    f"[{_UNSPACED_CLASS}]|[[\\p{{L}}\\p{{N}}]--[{_UNSPACED_CLASS}]][[\\p{{L}}\\p{{N}}\\p{{M}}\\p{{Join_Control}}]--[{_UNSPACED_CLASS}]]*",
    regex.V1)


# Hangul (syllable blocks, jamo, compatibility jamo): spaced, but each block packs two or three letters.
HANGUL_CHAR = re.compile("[\u1100-\u11ff\u3130-\u318f\uac00-\ud7a3]")


def unspaced_share(text: str, sample: int = 4000) -> float:
    """Share of unspaced-script characters among the non-space characters of (a sample of) text."""
    return _share(text, UNSPACED_CHAR, sample)


def hangul_share(text: str, sample: int = 4000) -> float:
    """Share of Hangul characters among the non-space characters of (a sample of) text."""
    return _share(text, HANGUL_CHAR, sample)


def _share(text: str, chars_of: re.Pattern, sample: int) -> float:
    head = text[:sample]
    if head.isascii():
        return 0.0
    chars = sum(1 for ch in head if not ch.isspace())
    return len(chars_of.findall(head)) / chars if chars else 0.0


def split_words(text: str) -> list[str]:
    """Whitespace tokens, with every unspaced-script character a token of its own."""
    if text.isascii():
        return text.split()
    return _WORD_TOKEN.findall(text)


def shingle_tokens(text: str) -> list[str]:
    """Lower-cased words without punctuation: the units MinHash shingles are made of."""
    return _SHINGLE_TOKEN.findall(text.lower())
