"""Tokenizers for ROUGE that keep non-Latin text.

rouge-score's default tokenizer lowercases and then replaces every character outside [a-z0-9]
with a space, so Chinese, Japanese, Greek, Cyrillic, Arabic... text scores 0 against anything.
These tokenizers keep every script:

- `default`: rouge-score's own (Latin letters and digits only; what published English ROUGE uses).
- `unicode`: words are runs of Unicode letters/digits with their combining marks (Devanagari's
  vowel signs, Arabic's harakat, an accent typed as its own character), lowercased; characters of
  scripts written without spaces between words (CJK ideographs, kana, Thai, Lao, Khmer, Myanmar,
  Tibetan) are one token each, with their marks. ASCII English text tokenizes exactly as
  `default` does, with or without `stemmer` (accented letters, which `default` drops, are kept).
- `char`: every letter or digit is its own token, with its combining marks (punctuation and
  spaces dropped).

Both read the text in Unicode's composed form (NFC), so "café" typed as one character or as "e"
and an accent is one word. (Python's `re` counts a combining mark as no letter, which split
"किताब" into क, त, ब: the `regex` module's word characters include marks.)

With `stemmer`, tokens longer than 3 characters are Porter-stemmed, as rouge-score does and with
the stemmer it builds (NLTK's `PorterStemmer()`, NLTK_EXTENSIONS mode).
"""

from __future__ import annotations

import unicodedata

import regex
from rouge_score import tokenizers

NAMES = ("default", "unicode", "char")

# Scripts whose words are not separated by spaces: one character = one token.
_UNSPACED = (
    "\u0e00-\u0eff"  # Thai, Lao
    "\u0f00-\u0fff"  # Tibetan
    "\u1000-\u109f"  # Myanmar
    "\u1780-\u17ff"  # Khmer
    "\u2e80-\u2fdf"  # CJK radicals
    "\u3040-\u30ff"  # Hiragana, Katakana
    "\u3100-\u312f"  # Bopomofo
    "\u3400-\u4dbf"  # CJK extension A
    "\u4e00-\u9fff"  # CJK unified ideographs
    "\uf900-\ufaff"  # CJK compatibility ideographs
    "\U00020000-\U0003134f"  # CJK extensions B-G
)
_UNICODE_TOKEN = regex.compile(rf"[{_UNSPACED}]\p{{M}}*|[^\W_{_UNSPACED}]+")
_CHAR_TOKEN = regex.compile(r"[^\W_\p{Join_Control}]\p{M}*")  # (regex counts ZWJ/ZWNJ as word characters: no token)


def _composed(text: str) -> str:
    return unicodedata.normalize("NFC", text.lower())


class UnicodeTokenizer(tokenizers.Tokenizer):
    """Words of Unicode letters/digits; one token per character in scripts without spaces."""

    def __init__(self, use_stemmer: bool = False):
        self._stemmer = _porter() if use_stemmer else None

    def tokenize(self, text: str) -> list[str]:
        tokens = _UNICODE_TOKEN.findall(_composed(text))
        return _stem(tokens, self._stemmer)


class CharTokenizer(tokenizers.Tokenizer):
    """Every Unicode letter or digit is a token: ROUGE over characters."""

    def __init__(self, use_stemmer: bool = False):
        del use_stemmer  # stemming has no meaning for single characters

    def tokenize(self, text: str) -> list[str]:
        return _CHAR_TOKEN.findall(_composed(text))


def _porter():
    from nltk.stem import porter

    # rouge-score's DefaultTokenizer builds exactly this: `porter.PorterStemmer()`, NLTK's default
    # NLTK_EXTENSIONS mode (the ORIGINAL_ALGORITHM mode stems differently: "dying" -> "dy", not "die").
    return porter.PorterStemmer()


def _stem(tokens: list[str], stemmer) -> list[str]:
    if stemmer is None:
        return tokens
    return [stemmer.stem(t) if len(t) > 3 else t for t in tokens]


def make_tokenizer(name: str, use_stemmer: bool = False) -> tokenizers.Tokenizer:
    if name == "default":
        return tokenizers.DefaultTokenizer(use_stemmer)
    if name == "unicode":
        return UnicodeTokenizer(use_stemmer)
    if name == "char":
        return CharTokenizer(use_stemmer)
    raise ValueError(f"unknown ROUGE tokenizer {name!r}; choose one of {', '.join(NAMES)}")
