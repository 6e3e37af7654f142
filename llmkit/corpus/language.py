"""Language identification with py3langid, whose model ships inside the package (no download)."""

from __future__ import annotations

from collections import defaultdict
from functools import lru_cache

# langid's score is computed on the whole text; a prefix is enough to name a document's language
# and keeps the cost flat for very long documents.
_SAMPLE_CHARS = 10_000

# py3langid 0.4 splits Chinese into zh / wuu (Wu) / yue (Cantonese), which share most characters:
# on clean Mandarin the probability mass is spread over the three and "zh" alone rarely reaches
# FineWeb's 0.65. Scores of a macro-language's members are added up under its code.
MACRO_LANGUAGES = {"wuu": "zh", "yue": "zh", "nn": "no", "uzs": "uz", "arz": "ar", "ary": "ar"}
_MERGED = set(MACRO_LANGUAGES) | set(MACRO_LANGUAGES.values())


@lru_cache(maxsize=1)
def _identifier():
    from py3langid.langid import MODEL_FILE, LanguageIdentifier

    return LanguageIdentifier.from_model_file(MODEL_FILE, norm_probs=True)


def known_codes() -> set[str]:
    """The codes detect() can return: the model's languages, macro-language members merged."""
    return {MACRO_LANGUAGES.get(str(code), str(code)) for code in _identifier().nb_classes}


def detect(text: str) -> tuple[str, float]:
    """(ISO 639-1 code, probability in [0, 1]), macro-language members merged."""
    sample = text[:_SAMPLE_CHARS]
    lang, score = _identifier().classify(sample)
    if lang not in _MERGED:  # the common case: no sibling languages to add up
        return str(lang), float(score)
    scores: dict[str, float] = defaultdict(float)
    for lang, score in _identifier().rank(sample)[:8]:
        scores[MACRO_LANGUAGES.get(str(lang), str(lang))] += float(score)
    lang = max(scores, key=scores.__getitem__)
    return lang, min(1.0, scores[lang])
