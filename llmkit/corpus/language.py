"""Language identification with py3langid, whose model ships inside the package (no download)."""

from __future__ import annotations

from functools import lru_cache

# langid's score is computed on the whole text; a prefix is enough to name a document's language
# and keeps the cost flat for very long documents.
_SAMPLE_CHARS = 10_000


@lru_cache(maxsize=1)
def _identifier():
    from py3langid.langid import MODEL_FILE, LanguageIdentifier

    return LanguageIdentifier.from_model_file(MODEL_FILE, norm_probs=True)


def detect(text: str) -> tuple[str, float]:
    """(ISO 639-1 code, probability in [0, 1])."""
    lang, score = _identifier().classify(text[:_SAMPLE_CHARS])
    return str(lang), float(score)
