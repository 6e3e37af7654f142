"""The clean stage's options: one dataclass, two presets, and their resolution.

Precedence: dataclass defaults < preset < `--config FILE` (a `[clean]` table or top-level keys)
< flags typed on the command line. The preset only fills in what the file and flags leave open,
so `--preset web --min-words 20` means "web rules, but 20 words is enough".

Thresholds follow the published pipelines; docs/clean.md gives each one's source:
Gopher = Rae et al. 2021 (arXiv:2112.11446, App. A, Table A1), C4 = Raffel et al. 2020
(JMLR 21, §2.2), FineWeb = Penedo et al. 2024 (arXiv:2406.17557) as released in datatrove.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any, ClassVar, Optional

from llmkit import config as config_lib
from llmkit.errors import UsageError, UserError, unused_options
from llmkit.executor import Execution
from llmkit.options import Options, comma_floats, comma_list, group, option, seed_option

PRESETS = ("default", "web")
DOC_PER = ("file", "line", "blank-line")


INPUT = "Input"
NORMALISE = "Normalisation and unusable documents"
LANGUAGE = "Language"
GOPHER = "Gopher quality (Rae et al. 2021, App. A)"
REPETITION = "Gopher repetition (Table A1)"
C4 = "C4 line rules (Raffel et al. 2020)"
FINEWEB = "FineWeb rules (Penedo et al. 2024)"
DEDUP = "De-duplication"
OUTPUT = "Output and run"
_READ = "input (the documents read, stats.sources)"


_MINHASH_SETTINGS = ("ngram", "num_perm", "bands", "rows", "threshold", "seed")
# A rule group's settings, by the switch that turns the group on, and what to tell a user who set them with it off
_RULE_GROUPS = {GOPHER: ("gopher_quality", "the Gopher quality rules, which --gopher-quality or --preset web turns on"),
                REPETITION: ("gopher_repetition", "the Gopher repetition rules, which --gopher-repetition or --preset web turns on"),
                C4: ("c4", "the C4 line rules, which --c4 or --preset web turns on"),
                FINEWEB: ("fineweb", "the FineWeb rules, which --fineweb or --preset web turns on")}
_THRESHOLD_PICKS = "--threshold picks bands x rows itself ({} x {} here); give --threshold or --bands/--rows, not both"


@dataclass
class CleanConfig(Options):
    preset: str = option("default", "default: your own text (normalise, clean up, dedup). web: + Gopher/C4/FineWeb rules and "
                         "English only.", choices=PRESETS)
    # Reading
    text_field: Optional[str] = option(None, "Field/column holding the text; a,b = the first one a file has; a.b = a nested one "
                                       "(default: 'text', or the only text field).", panel=INPUT)
    doc_per: str = option("file", "Plain text: one document per file, line, or blank-line-separated block.", panel=INPUT,
                          choices=DOC_PER)
    dataset: Optional[str] = option(None, "Read a `datasets` data set: a local file/folder or a hub name.", panel=INPUT,
                                    hashed=False, recorded_as=_READ)
    dataset_config: Optional[str] = option(None, "The data set's configuration (subset) name.", panel=INPUT, hashed=False,
                                           recorded_as=_READ)
    split: str = option("train", "The data set's split.", panel=INPUT, hashed=False, recorded_as=_READ)
    skip_bad_lines: bool = option(False, "Skip malformed JSONL/CSV lines instead of stopping.", flags=("--skip-bad-lines/--no-skip-bad-lines",), panel=INPUT)
    # Normalisation and cleanup (both presets)
    fix_unicode: bool = option(True, "Repair mojibake (ftfy) and Unicode-normalise.", panel=NORMALISE)
    normalization: str = option("NFC", "Unicode normal form.", choices=("NFC", "NFKC", "NFD", "NFKD"), panel=NORMALISE)
    cleanup: bool = option(True, "Remove control characters, odd spaces, trailing blanks.", panel=NORMALISE)
    strip_html: bool = option(False, "Keep only the visible text of HTML: of .html/.htm files and of records (every other "
                              "file is plain text, left as written).", panel=NORMALISE)
    # Removal of unusable documents (both presets)
    max_binary_ratio: float = option(0.01, "Drop a document with more than this share of control characters (NUL etc.).", panel=NORMALISE,
                                     range="[0, 1]")
    max_garbled_ratio: float = option(0.05, "Drop a document with more than this share of U+FFFD, private-use or surrogate "
                                      "characters.", panel=NORMALISE, range="[0, 1]")
    # Language filter (py3langid); empty list = off
    languages: list[str] = option(default_factory=list, help="Keep only these languages, e.g. en,zh (py3langid). web preset: en.",
                                  panel=LANGUAGE, cli_type=Optional[list[str]], parse=comma_list)
    min_language_score: float = option(0.65, "Minimum language probability (FineWeb's threshold).", panel=LANGUAGE, range="[0, 1]")
    # Gopher quality (Rae et al. 2021, App. A)
    gopher_quality: bool = option(False, "Gopher quality rules (web preset).", panel=GOPHER)
    min_words: int = option(50, "Minimum words (CJK: characters).", panel=GOPHER, range="[0, inf)")
    max_words: int = option(100_000, "Maximum words.", panel=GOPHER, range="[0, inf)")
    min_mean_word_length: float = option(3.0, "Minimum mean word length.", panel=GOPHER, range="[0, inf)")
    max_mean_word_length: float = option(10.0, "Maximum mean word length.", panel=GOPHER, range="[0, inf)")
    max_symbol_word_ratio: float = option(0.1, "Maximum '#' and '...' per word.", panel=GOPHER, range="[0, inf)")
    max_bullet_lines_ratio: float = option(0.9, "Maximum share of lines starting with a bullet.", panel=GOPHER, range="[0, 1]")
    max_ellipsis_lines_ratio: float = option(0.3, "Maximum share of lines ending with an ellipsis.", panel=GOPHER, range="[0, 1]")
    min_alpha_words_ratio: float = option(0.8, "Minimum share of words with a letter.", panel=GOPHER, range="[0, 1]")
    min_stop_words: int = option(2, "Minimum distinct English stop words.", panel=GOPHER, range="[0, inf)")
    # Gopher repetition (Table A1)
    gopher_repetition: bool = option(False, "Gopher repetition rules (web preset).", panel=REPETITION)
    max_dup_line_frac: float = option(0.30, "Maximum share of duplicated lines.", panel=REPETITION, range="[0, 1]")
    max_dup_para_frac: float = option(0.30, "Maximum share of duplicated paragraphs.", panel=REPETITION, range="[0, 1]")
    max_dup_line_char_frac: float = option(0.20, "Maximum share of characters in duplicated lines.", panel=REPETITION, range="[0, 1]")
    max_dup_para_char_frac: float = option(0.20, "Maximum share of characters in duplicated paragraphs.", panel=REPETITION, range="[0, 1]")
    max_top_ngram_char_frac: list[float] = option(
        default_factory=lambda: [0.20, 0.18, 0.16], panel=REPETITION, range="[0, 1]", cli_type=Optional[list[str]], parse=comma_floats,
        help="Maximum share of characters in the most frequent 2-, 3-, 4-gram (3 values, comma-separated).",
    )
    max_dup_ngram_char_frac: list[float] = option(
        default_factory=lambda: [0.15, 0.14, 0.13, 0.12, 0.11, 0.10], panel=REPETITION, range="[0, 1]", cli_type=Optional[list[str]],
        parse=comma_floats, help="Maximum share of characters in duplicated 5- .. 10-grams (6 values, comma-separated).",
    )
    # C4 line rules (Raffel et al. 2020); terminal punctuation off, as FineWeb runs it
    c4: bool = option(False, "C4 line rules (web preset).", panel=C4)
    c4_terminal_punct: bool = option(False, "Remove lines not ending in terminal punctuation (off, as FineWeb runs C4).", panel=C4)
    c4_min_words_per_line: int = option(3, "Remove lines with fewer words.", panel=C4, range="[0, inf)")
    c4_max_word_length: int = option(1000, "Remove lines with a longer word.", panel=C4, range="[1, inf)")
    c4_min_sentences: int = option(5, "Drop a document with fewer sentences left.", panel=C4, range="[0, inf)")
    c4_remove_citations: bool = option(True, "Remove Wikipedia citation marks ([1], [edit]).", panel=C4)
    c4_lorem_ipsum: bool = option(True, "Drop a document containing 'lorem ipsum'.", panel=C4)
    c4_javascript: bool = option(True, "Remove lines mentioning javascript.", panel=C4)
    c4_curly_bracket: bool = option(True, "Drop a document containing a curly bracket.", panel=C4)
    c4_policy: bool = option(True, "Remove lines about terms of use, privacy and cookie policies.", panel=C4)
    # FineWeb extras (Penedo et al. 2024)
    fineweb: bool = option(False, "FineWeb line rules (web preset).", panel=FINEWEB)
    min_line_punct_ratio: float = option(0.12, "Minimum share of lines ending in punctuation.", panel=FINEWEB, range="[0, 1]")
    max_short_line_ratio: float = option(0.67, "Maximum share of short lines.", panel=FINEWEB, range="[0, 1]")
    short_line_length: int = option(30, "A short line has at most this many characters.", panel=FINEWEB, range="[0, inf)")
    max_char_dup_ratio: float = option(0.01, "Maximum share of characters in duplicated lines.", panel=FINEWEB, range="[0, 1]")
    max_newline_word_ratio: float = option(0.3, "Maximum newlines per word.", panel=FINEWEB, range="[0, inf)")
    # De-duplication
    exact_dedup: bool = option(True, "Drop exact duplicates.", panel=DEDUP)
    near_dedup: bool = option(True, "Drop near duplicates (MinHash LSH).", panel=DEDUP)
    ngram: int = option(5, "Words per shingle (one character = one word in unspaced scripts).", panel=DEDUP, range="[1, 1000]")
    num_perm: int = option(112, "MinHash permutations.", panel=DEDUP, range="[1, 4096]")
    bands: int = option(14, "LSH bands.", panel=DEDUP, range="[1, inf)")
    rows: int = option(8, "LSH rows per band.", panel=DEDUP, range="[1, inf)")
    threshold: Optional[float] = option(None, "Jaccard similarity where near-duplicates start: picks bands x rows minimising the "
                                        "false positives + negatives around it (datasketch's rule), so pairs just above "
                                        "it are caught about half the time, far above nearly always.",
                                        panel=DEDUP, range="(0, 1)")
    # Output
    keep_rejects: bool = option(False, "Write dropped documents and their reasons to OUT/rejects.jsonl.", flags=("--keep-rejects/--no-keep-rejects",),
                                panel=OUTPUT)
    shard_mb: int = option(256, "Uncompressed text per Parquet shard, in MB.", panel=OUTPUT, range="[1, inf)")
    workers: int = option(1, "Worker processes (0: one per idle core). Output is the same for any value.", panel=OUTPUT, runtime=True,
                          range="[0, 1024]")
    seed: int = seed_option("Seed of the MinHash permutations.")
    execution: Execution = group(Execution, panel=OUTPUT)

    RECORDED_AS: ClassVar[dict[str, str]] = {"threshold": "config: the bands and rows it picks (itself as null)"}

    def hashed(self) -> dict:
        """Without near-dedup nothing is drawn and no MinHash is made: its settings and the seed are
        left out, so that another --seed (or --num-perm) is not another corpus (the manifest's seed is null)."""
        recorded = super().hashed()
        if not self.near_dedup:
            for name in _MINHASH_SETTINGS:
                recorded.pop(name)
        else:
            # --threshold is recorded as the bands x rows it picked (`--bands 9 --rows 12` is the corpus `--threshold 0.8`
            # makes), and as null: the key every corpus recorded before, so their fingerprints hold
            recorded["threshold"] = None
        return recorded

    def _refuse_idle_settings(self) -> None:
        """A threshold set for rules that are off is refused, not ignored: `--min-words 20` alone
        filtered nothing, unsaid, and made another fingerprint of the same corpus."""
        from llmkit.options import flat_options

        idle = {"min_language_score": (not self.languages, "the language filter, which --languages or --preset web turns on"),
                "normalization": (not self.fix_unicode, "--fix-unicode's normalisation"),
                # (on files they read nothing, unsaid, as a review found: --split 1.5 ran)
                "dataset_config": (self.dataset is None, "the reading of a data set, which --dataset NAME names"),
                "split": (self.dataset is None, "the reading of a data set, which --dataset NAME names")}
        # (the seed too is unread without near-dedup, and allowed: one seed for every stage of a recipe)
        idle.update({name: (not self.near_dedup, "near-duplicate removal, which --no-near-dedup turns off")
                     for name in _MINHASH_SETTINGS if name != "seed"})
        for opt in flat_options(type(self)):
            switch, what = _RULE_GROUPS.get(opt.panel, (None, ""))
            if switch is not None and opt.name != switch:
                idle[opt.name] = (not getattr(self, switch), what)
        flags = {opt.name: opt.flag for opt in flat_options(type(self))}
        unused = [(flags[name], what) for name, (off, what) in idle.items()
                  if off and getattr(self, name) != self.default_of(name)]
        if unused:
            raise unused_options(unused)

    def check_given(self, given: frozenset[str]) -> None:
        # --bands 14 --rows 8 typed beside --threshold are the defaults __post_init__ cannot tell from none
        asked = getattr(self, "_asked_bands_rows", None)
        if asked is not None and given & {"bands", "rows"} and asked != (self.bands, self.rows):
            raise UserError(_THRESHOLD_PICKS.format(self.bands, self.rows))
        # (the bands read the first bands x rows signatures only: more permutations cost time and, drawn
        # from one generator, only reseed the rest; --threshold picks bands x rows from them all)
        if "num_perm" in given and self.threshold is None and self.bands * self.rows < self.num_perm:
            raise UserError(f"--num-perm {self.num_perm} computes permutations that bands x rows ({self.bands} x {self.rows} = "
                            f"{self.bands * self.rows}) never read; give --threshold T to pick bands x rows from "
                            f"{self.num_perm}, or --bands/--rows whose product is {self.num_perm}")

    def __post_init__(self) -> None:
        if isinstance(self.languages, str):  # "en,zh" from the command line or a file
            self.languages = [code.strip() for code in self.languages.split(",") if code.strip()]
        self.languages = [code.lower() for code in self.languages]  # (py3langid's codes: "EN" matched nothing)
        super().__post_init__()
        if self.text_field is not None and not any(name.strip() for name in self.text_field.split(",")):
            raise UserError(f"--text-field {self.text_field!r} names no field; pass e.g. --text-field text, or "
                            "--text-field text,content for the first of several a file has")
        if self.languages:
            from llmkit.corpus.language import MACRO_LANGUAGES, known_codes

            merged = [code for code in self.languages if code in MACRO_LANGUAGES]
            if merged:  # detect() reports these as their macro-language: asked for, they would match nothing
                codes = dict.fromkeys(MACRO_LANGUAGES.get(code, code) for code in self.languages)  # (order kept, once each)
                raise UserError(", ".join(f"--languages {code} is counted as {MACRO_LANGUAGES[code]}" for code in merged)
                                + f"; pass --languages {','.join(codes)}")
            known = known_codes()
            unknown = [code for code in self.languages if code not in known]
            if unknown:  # "EN" or a typo would drop every document of that language without a word
                raise UserError(f"--languages {', '.join(unknown)}: not a language code py3langid knows; use lowercase ISO "
                                "639-1 codes such as en, de, zh")
            # one set of languages, however typed: `zh,en` and `en,zh,en` keep the corpus `en,zh` keeps, and are
            # recorded so (each order was a fingerprint of its own)
            self.languages = sorted(set(self.languages))
        self._refuse_idle_settings()
        if self.min_words > self.max_words:
            raise UserError(f"--min-words ({self.min_words}) is above --max-words ({self.max_words}); every document would go")
        if self.min_mean_word_length > self.max_mean_word_length:
            raise UserError(f"--min-mean-word-length ({self.min_mean_word_length}) is above --max-mean-word-length "
                            f"({self.max_mean_word_length})")
        if self.threshold is not None:
            from llmkit.corpus.minhash import optimal_bands_rows

            picked = optimal_bands_rows(self.threshold, self.num_perm)
            defaults = (self.default_of("bands"), self.default_of("rows"))
            if (self.bands, self.rows) not in {defaults, picked}:  # (picked: a config this built before, rebuilt)
                raise UserError(_THRESHOLD_PICKS.format(*picked))
            self._asked_bands_rows = (self.bands, self.rows)  # (not a field: for check_given, typed at the defaults)
            self.bands, self.rows = picked
        if self.bands < 1 or self.rows < 1 or self.bands * self.rows > self.num_perm:
            raise UserError(
                f"bands x rows ({self.bands} x {self.rows}) must fit in num_perm ({self.num_perm}); "
                "lower --bands/--rows or raise --num-perm"
            )
        if len(self.max_top_ngram_char_frac) != 3 or len(self.max_dup_ngram_char_frac) != 6:
            raise UserError(
                "max_top_ngram_char_frac needs 3 values (n = 2, 3, 4) and max_dup_ngram_char_frac 6 (n = 5..10)"
            )


# What `--preset web` switches on; everything else keeps its default.
WEB_PRESET: dict[str, Any] = {
    "languages": ["en"],
    "gopher_quality": True,
    "gopher_repetition": True,
    "c4": True,
    "fineweb": True,
}


def resolve(file: Path | str | None = None, explicit: dict[str, Any] | None = None) -> CleanConfig:
    """Defaults < preset < config file < explicit flags (the preset fills what the file leaves open)."""
    explicit = explicit or {}

    def preset_of(from_file: dict[str, Any]) -> dict[str, Any] | None:
        preset = explicit["preset"] if "preset" in explicit else from_file.get("preset", "default")
        if preset not in PRESETS:
            where = f" (set in {file})" if "preset" not in explicit else ""
            raise UsageError(f"--preset {preset!r}{where} is not a preset; choose one of: {', '.join(PRESETS)}")
        return WEB_PRESET if preset == "web" else None

    return config_lib.resolve(CleanConfig, file=file, section="clean", explicit=explicit, preset=preset_of)
