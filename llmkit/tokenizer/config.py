"""The options of `llmkit tokenizer train` and `llmkit tokenize` (docs/tokenizer.md): declared once, here."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Optional

from llmkit.data.special_tokens import DEFAULT_SPECIAL_TOKENS, REQUIRED_SPECIAL_TOKENS
from llmkit.errors import UserError
from llmkit.executor import Execution
from llmkit.options import Options, comma_list, group, option, seed_option

BYTE_ALPHABET = 256


@dataclass
class TokenizerTrainConfig(Options):
    vocab_size: int = option(8192, "Vocabulary size, special and byte tokens included.", range="[1, 4194304]")
    min_frequency: int = option(2, "Merge only pairs seen at least this often.", range="[1, 4294967295]")
    special_tokens: list[str] = option(
        default_factory=lambda: list(DEFAULT_SPECIAL_TOKENS), cli_type=Optional[list[str]], parse=comma_list,
        help="Comma-separated special tokens, given ids 0, 1, ... in order.",
    )
    max_docs: int | None = option(None, "Train on at most this many documents: the first N pieces in input order "
                                         "(--sample-bytes draws across the whole input).", range="[1, inf)")
    sample_bytes: int | None = option(None, "Train on about this many bytes, drawn uniformly across the corpus with --seed.",
                                      range="[1, inf)")
    heldout_every: int = option(100, "Hold out about one piece in N (a document or ~8K characters of one; a seeded random draw) for the stats.", range="[2, inf)")
    heldout_max_bytes: int = option(2_000_000, "Held-out bytes for the stats: pieces are held out until they reach this many (the last one whole).", range="[1, inf)")
    seed: int = seed_option("Seed for sampling the training text and the held-out pieces.", hashed=False, recorded_as="manifest seed")
    workers: int = option(0, "Processes (or Ray actors) that read and sample the input. 0: locally, this process alone "
                          "(the trainer itself uses every core); under Ray, one per CPU of the cluster. Does not change the result.",
                          runtime=True, range="[0, 1024]")
    execution: Execution = group(Execution)

    def __post_init__(self) -> None:
        super().__post_init__()
        specials = list(self.special_tokens)
        if len(set(specials)) != len(specials) or any(not s for s in specials):
            raise UserError(f"--special-tokens must be distinct and non-empty, got {specials}")
        plain = [s for s in specials if not (s.startswith("<|") and s.endswith("|>") and len(s) > 4)]
        if plain:  # "a" or "Ġthe" as a special token would capture every one of them in text
            raise UserError(f"--special-tokens {', '.join(plain)}: write a special token as <|name|>, so that ordinary text "
                            "never contains it")
        # <|-|> is one pre-token of punctuation, which BPE may learn from text as a merge with the special's id:
        # the text "<|-|>" then encoded as the special token. A letter or digit splits the name from its brackets.
        marks = [s for s in specials if not any(c.isalnum() for c in s[2:-2])]
        if marks:
            raise UserError(f"--special-tokens {', '.join(marks)}: give each special token's name a letter or digit "
                            "(<|sep|>), so that text can never be learnt into it")
        missing = [s for s in REQUIRED_SPECIAL_TOKENS if s not in specials]
        if missing:
            raise UserError(f"--special-tokens must include {', '.join(missing)} (the stages rely on them)")
        needed = BYTE_ALPHABET + len(specials)
        if self.vocab_size < needed:
            raise UserError(
                f"--vocab-size {self.vocab_size} is too small: the 256 byte tokens and {len(specials)} special tokens "
                f"need {needed}; pass --vocab-size {needed} or more"
            )


@dataclass
class TokenizeConfig(Options):
    val_fraction: float = option(0.05, "Share of documents held out for validation.", range="[0, 1)")
    add_bos: bool = option(False, "Start every document with <|bos|>.", flags=("--add-bos/--no-add-bos",))
    shard_tokens: int = option(100_000_000, "Tokens per shard (a shard is closed at the first document end past this).", range="[1, inf)")
    seed: int = seed_option("Seed of the train/validation split.", hashed=False, recorded_as="manifest seed")
    workers: int = option(0, "Encoding threads (Ray actors with --executor ray); 0 = one per 8 MB of text, at most one per idle core (on Ray: one per CPU of the cluster). Does not change the result.", runtime=True, range="[0, 1024]")
    batch_size: int = option(2048, "Documents per encoding batch, at most (and about 16 MB of text at most).", runtime=True, range="[1, 1048576]")
    fast: bool = option(True, "Encode through tiktoken built from our merges, when it applies.", flags=("--fast/--no-fast",),
                        runtime=True)
    execution: Execution = group(Execution)
