"""What happens to one document before de-duplication: the part that runs in worker processes.

Everything here is a pure function of (document, config, seed), which is what lets `--workers N`
give byte-identical output to one worker: workers only transform documents; the order-dependent
decisions (exact and near duplicates) are made afterwards, in input order, by the main process.
"""

from __future__ import annotations

import re

from dataclasses import dataclass
from typing import Optional

import numpy as np
import xxhash

from llmkit.corpus import filters, normalize
from llmkit.corpus.config import CleanConfig
from llmkit.corpus.dedup import ProcessedBatch
from llmkit.corpus.minhash import MinHasher


_LONE_SURROGATE = re.compile("[\ud800-\udfff]")


@dataclass
class Processed:
    id: str
    source: str
    text: str  # cleaned text (or, for a dropped document, the text the rule saw)
    reason: Optional[str]  # None: kept so far
    bytes_in: int
    bytes_out: int
    exact_key: bytes = b""


class DocumentProcessor:
    def __init__(self, cfg: CleanConfig):
        self.cfg = cfg
        self.hasher = MinHasher(cfg.num_perm, cfg.ngram, cfg.bands, cfg.rows, cfg.seed) if cfg.near_dedup else None

    def __call__(self, doc_id: str, source: str, raw: str) -> Processed:
        cfg = self.cfg
        bytes_in = len(raw.encode("utf-8", "surrogatepass"))
        text, reason = self._clean_and_filter(raw, source)
        try:
            encoded = text.encode("utf-8")
        except UnicodeEncodeError:  # lone surrogates (from JSON escapes) cannot be stored as UTF-8: U+FFFD, as ftfy gives
            text = _LONE_SURROGATE.sub("\ufffd", text)
            encoded = text.encode("utf-8")
        result = Processed(doc_id, source, text, reason, bytes_in, len(encoded))
        if reason is None and cfg.exact_dedup:
            result.exact_key = xxhash.xxh3_128_digest(encoded)
        return result

    def batch(self, batch: list[tuple[str, str, str]]) -> ProcessedBatch:
        """Every document of the batch, then the MinHash band keys of the kept ones, all at once."""
        docs = [self(doc_id, source, text) for doc_id, source, text in batch]
        if self.hasher is None:
            return ProcessedBatch(docs)
        kept = [i for i, doc in enumerate(docs) if doc.reason is None]
        keys, has = self.hasher.batch_keys([docs[i].text for i in kept])
        band_keys = np.zeros((len(docs), self.hasher.bands), dtype=np.uint64)
        has_keys = np.zeros(len(docs), dtype=bool)
        band_keys[kept], has_keys[kept] = keys, has
        return ProcessedBatch(docs, band_keys, has_keys)

    def _clean_and_filter(self, raw: str, source: str) -> tuple[str, Optional[str]]:
        cfg = self.cfg
        reason = filters.binary_reason(raw, cfg)
        if reason:
            return raw, reason
        text = raw
        if cfg.fix_unicode:
            text = normalize.fix_unicode(text, cfg.normalization)
        if cfg.strip_html and normalize.may_hold_html(source):
            text = normalize.strip_html(text)
        if cfg.cleanup:
            text = normalize.cleanup(text)
        if not text.strip():
            return text, "empty"
        reason = filters.garbled_reason(text, cfg)
        if reason:
            return text, reason
        language = None
        if cfg.languages:
            from llmkit.corpus.language import detect

            language, score = detect(text)
            if language not in cfg.languages or score < cfg.min_language_score:
                return text, "language"
        doc = filters.DocView(text, language)
        if cfg.gopher_repetition and (reason := filters.gopher_repetition(doc, cfg)):
            return text, reason
        if cfg.gopher_quality and (reason := filters.gopher_quality(doc, cfg)):
            return text, reason
        if cfg.c4:
            text, reason = filters.c4(doc, cfg)
            if reason:
                return text, reason
            if not text:  # every line was one C4 removes (with --c4-min-sentences 0 nothing else says so)
                return doc.text, "c4_no_lines_left"
            doc = filters.DocView(text, language)
        if cfg.fineweb and (reason := filters.fineweb(doc, cfg)):
            return text, reason
        return text, None


# Worker-process state: built once per process by the pool initializer.
_PROCESSOR: Optional[DocumentProcessor] = None


def init_worker(cfg: CleanConfig) -> None:
    global _PROCESSOR
    _PROCESSOR = DocumentProcessor(cfg)


def process_batch(batch: list[tuple[str, str, str]]) -> ProcessedBatch:
    assert _PROCESSOR is not None, "init_worker was not called"
    return _PROCESSOR.batch(batch)
