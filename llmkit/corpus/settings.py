"""The clean stage's options: one dataclass, two presets, and their resolution.

Precedence: dataclass defaults < preset < `--config FILE` (a `[clean]` table or top-level keys)
< flags typed on the command line. The preset only fills in what the file and flags leave open,
so `--preset web --min-words 20` means "web rules, but 20 words is enough".

Thresholds follow the published pipelines; docs/clean.md gives each one's source:
Gopher = Rae et al. 2021 (arXiv:2112.11446, App. A, Table A1), C4 = Raffel et al. 2020
(JMLR 21, §2.2), FineWeb = Penedo et al. 2024 (arXiv:2406.17557) as released in datatrove.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Optional

from llmkit import config as config_lib
from llmkit.errors import UserError

PRESETS = ("default", "web")
DOC_PER = ("file", "line", "blank-line")


@dataclass
class CleanConfig:
    preset: str = "default"
    # Reading
    text_field: Optional[str] = None  # None: "text", or the only string field of a record
    doc_per: str = "file"  # plain text: one document per file, per line, or per blank-line-separated block
    skip_bad_lines: bool = False
    # Normalisation and cleanup (both presets)
    fix_unicode: bool = True  # ftfy mojibake repair + Unicode normalisation
    normalization: str = "NFC"
    cleanup: bool = True  # control characters, odd spaces, trailing blanks, runs of empty lines
    strip_html: bool = False
    # Removal of unusable documents (both presets)
    max_binary_ratio: float = 0.01  # share of control characters (NUL etc.) in the raw text
    max_garbled_ratio: float = 0.05  # share of U+FFFD / unassigned / private-use characters
    # Language filter (py3langid); empty list = off
    languages: list[str] = field(default_factory=list)
    min_language_score: float = 0.65  # FineWeb's threshold
    # Gopher quality (Rae et al. 2021, App. A)
    gopher_quality: bool = False
    min_words: int = 50
    max_words: int = 100_000
    min_mean_word_length: float = 3.0
    max_mean_word_length: float = 10.0
    max_symbol_word_ratio: float = 0.1
    max_bullet_lines_ratio: float = 0.9
    max_ellipsis_lines_ratio: float = 0.3
    min_alpha_words_ratio: float = 0.8
    min_stop_words: int = 2
    # Gopher repetition (Table A1)
    gopher_repetition: bool = False
    max_dup_line_frac: float = 0.30
    max_dup_para_frac: float = 0.30
    max_dup_line_char_frac: float = 0.20
    max_dup_para_char_frac: float = 0.20
    max_top_ngram_char_frac: list[float] = field(default_factory=lambda: [0.20, 0.18, 0.16])  # n = 2, 3, 4
    max_dup_ngram_char_frac: list[float] = field(
        default_factory=lambda: [0.15, 0.14, 0.13, 0.12, 0.11, 0.10]
    )  # n = 5 .. 10
    # C4 line rules (Raffel et al. 2020); terminal punctuation off, as FineWeb runs it
    c4: bool = False
    c4_terminal_punct: bool = False
    c4_min_words_per_line: int = 3
    c4_max_word_length: int = 1000
    c4_min_sentences: int = 5
    c4_remove_citations: bool = True
    c4_lorem_ipsum: bool = True
    c4_javascript: bool = True
    c4_curly_bracket: bool = True
    c4_policy: bool = True
    # FineWeb extras (Penedo et al. 2024)
    fineweb: bool = False
    min_line_punct_ratio: float = 0.12
    max_short_line_ratio: float = 0.67
    short_line_length: int = 30
    max_char_dup_ratio: float = 0.01
    max_newline_word_ratio: float = 0.3
    # De-duplication
    exact_dedup: bool = True
    near_dedup: bool = True
    ngram: int = 5  # word n-gram shingles (one character = one word in unspaced scripts)
    num_perm: int = 112
    bands: int = 14
    rows: int = 8
    threshold: Optional[float] = None  # set: bands x rows re-chosen to minimise FP + FN at this Jaccard
    # Output
    keep_rejects: bool = False
    shard_mb: int = 256  # uncompressed text per Parquet shard
    seed: int = 0

    def __post_init__(self) -> None:
        if self.preset not in PRESETS:
            raise UserError(f"unknown preset {self.preset!r}; choose one of: {', '.join(PRESETS)}")
        if self.doc_per not in DOC_PER:
            raise UserError(f"--doc-per must be one of {', '.join(DOC_PER)}, got {self.doc_per!r}")
        if self.normalization not in ("NFC", "NFKC", "NFD", "NFKD"):
            raise UserError(f"normalization must be NFC, NFKC, NFD or NFKD, got {self.normalization!r}")
        if isinstance(self.languages, str):
            self.languages = [code.strip() for code in self.languages.split(",") if code.strip()]
        self.languages = list(self.languages)
        if self.ngram < 1:
            raise UserError(f"--ngram must be at least 1, got {self.ngram}")
        if self.threshold is not None:
            if not 0.0 < self.threshold < 1.0:
                raise UserError(f"--threshold must be between 0 and 1 (a Jaccard similarity), got {self.threshold}")
            from llmkit.corpus.minhash import optimal_bands_rows

            self.bands, self.rows = optimal_bands_rows(self.threshold, self.num_perm)
        if self.bands < 1 or self.rows < 1 or self.bands * self.rows > self.num_perm:
            raise UserError(
                f"bands x rows ({self.bands} x {self.rows}) must fit in num_perm ({self.num_perm}); "
                "lower --bands/--rows or raise --num-perm"
            )
        if len(self.max_top_ngram_char_frac) != 3 or len(self.max_dup_ngram_char_frac) != 6:
            raise UserError(
                "max_top_ngram_char_frac needs 3 values (n = 2, 3, 4) and max_dup_ngram_char_frac 6 (n = 5..10)"
            )
        if self.shard_mb < 1:
            raise UserError(f"shard_mb must be at least 1, got {self.shard_mb}")


# What `--preset web` switches on; everything else keeps its default.
WEB_PRESET: dict[str, Any] = {
    "languages": ["en"],
    "gopher_quality": True,
    "gopher_repetition": True,
    "c4": True,
    "fineweb": True,
}


def _file_values(file: Path | str | None) -> dict[str, Any]:
    if file is None:
        return {}
    data = config_lib.load_config_file(file)
    if isinstance(data.get("clean"), dict):
        data = data["clean"]
    return {k.replace("-", "_"): v for k, v in data.items() if not isinstance(v, dict)}


def resolve(file: Path | str | None = None, explicit: dict[str, Any] | None = None) -> CleanConfig:
    """Defaults < preset < config file < explicit flags."""
    explicit = {k: v for k, v in (explicit or {}).items() if k in {f.name for f in dataclasses.fields(CleanConfig)}}
    from_file = _file_values(file)
    preset = explicit.get("preset", from_file.get("preset", "default"))
    if preset not in PRESETS:
        raise UserError(f"unknown preset {preset!r}; choose one of: {', '.join(PRESETS)}")
    preset_values = WEB_PRESET if preset == "web" else {}
    # The preset fills only what the file leaves open; config.resolve puts the file under `explicit`.
    layered = {k: v for k, v in preset_values.items() if k not in from_file}
    layered.update(explicit)
    return config_lib.resolve(CleanConfig, file=file, section="clean", explicit=layered)
