"""`llmkit tokenizer train|encode|decode` and `llmkit tokenize`: option parsing and printing only."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer

from llmkit.errors import UserError

tokenizer_app = typer.Typer(no_args_is_help=True)

ConfigOption = Annotated[Path | None, typer.Option("--config", help="TOML/YAML file with this stage's options.")]
ForceOption = Annotated[bool, typer.Option("--force", help="Replace the output if it exists.")]
SeedOption = Annotated[int, typer.Option("--seed", help="Seed for sampling and splitting.")]


def _special_tokens(text: str | None) -> list[str] | None:
    if text is None:
        return None
    return [t.strip() for t in text.split(",") if t.strip()]


@tokenizer_app.command("train")
def train(
    ctx: typer.Context,
    inputs: Annotated[list[Path], typer.Argument(help="A corpus artifact (llmkit clean), or UTF-8 text files.")],
    out: Annotated[Path, typer.Option("--out", "-o", help="Output tokenizer artifact directory.")],
    vocab_size: Annotated[int, typer.Option("--vocab-size", help="Vocabulary size, special and byte tokens included.")] = 8192,
    min_frequency: Annotated[int, typer.Option("--min-frequency", help="Merge only pairs seen at least this often.")] = 2,
    special_tokens: Annotated[
        str | None,
        typer.Option("--special-tokens", help="Comma-separated special tokens, given ids 0, 1, ... in order "
                     "[default: <|bos|>,<|eos|>,<|pad|>,<|mask|>,<|system|>,<|user|>,<|assistant|>]."),
    ] = None,
    max_docs: Annotated[int | None, typer.Option("--max-docs", help="Train on at most this many documents.")] = None,
    sample_bytes: Annotated[
        int | None, typer.Option("--sample-bytes", help="Train on about this many bytes, sampled across the corpus.")
    ] = None,
    config: ConfigOption = None,
    seed: SeedOption = 0,
    force: ForceOption = False,
) -> None:
    """Train a byte-level BPE tokenizer on a corpus."""
    from llmkit.config import explicit_params, resolve
    from llmkit.tokenizer.train import TokenizerTrainConfig, train_tokenizer

    explicit = explicit_params(ctx)
    if "special_tokens" in explicit:
        explicit["special_tokens"] = _special_tokens(special_tokens)
    cfg = resolve(TokenizerTrainConfig, file=config, section="tokenizer", explicit=explicit)
    path = train_tokenizer(inputs, out, cfg, seed=seed, force=force)
    _print_summary(path, ["vocab_size", "training_pieces", "training_bytes", "bytes_per_token", "tokens_per_word", "train_seconds"])


@tokenizer_app.command("encode")
def encode(
    tokenizer: Annotated[Path, typer.Argument(help="Tokenizer artifact (or a tokens/checkpoint artifact).")],
    text: Annotated[str, typer.Argument(help="Text to encode.")],
) -> None:
    """Show the token ids and pieces of a text."""
    from rich.table import Table
    from rich.text import Text

    from llmkit.console import out
    from llmkit.data.tokenizer import load_tokenizer

    tok = load_tokenizer(tokenizer)
    ids = tok.encode(text)
    table = Table(title=f"{len(ids)} tokens, {len(text.encode('utf-8'))} bytes")
    for column in ("#", "id", "piece", "bytes"):
        table.add_column(column, justify="right" if column != "piece" else "left")
    for position, idx in enumerate(ids):
        table.add_row(str(position), str(idx), Text(_visible(tok.id_to_piece(idx))), str(int(tok.token_bytes[idx])))
    out.print(table)
    out.print(" ".join(map(str, ids)), soft_wrap=True)


def _visible(piece: str) -> str:
    """Whitespace made visible, so that ' the' and 'the' differ on screen."""
    return piece.replace(" ", "␣").replace("\n", "↵").replace("\t", "⇥").replace("\r", "␍")


@tokenizer_app.command("decode")
def decode(
    tokenizer: Annotated[Path, typer.Argument(help="Tokenizer artifact (or a tokens/checkpoint artifact).")],
    ids: Annotated[list[int], typer.Argument(help="Token ids, separated by spaces.")],
) -> None:
    """Turn token ids back into text."""
    from rich.text import Text

    from llmkit.console import out
    from llmkit.data.tokenizer import load_tokenizer

    tok = load_tokenizer(tokenizer)
    bad = [i for i in ids if not 0 <= i < tok.vocab_size]
    if bad:
        raise UserError(f"token id(s) {', '.join(map(str, bad))} outside the vocabulary 0..{tok.vocab_size - 1}")
    out.print(Text(tok.decode(ids)), soft_wrap=True)


def tokenize(
    ctx: typer.Context,
    corpus: Annotated[Path, typer.Argument(help="Corpus artifact (llmkit clean).")],
    tokenizer: Annotated[Path, typer.Option("--tokenizer", "-t", help="Tokenizer artifact (llmkit tokenizer train), or a checkpoint to use its tokenizer.")],
    out: Annotated[Path, typer.Option("--out", "-o", help="Output tokens artifact directory.")],
    val_fraction: Annotated[float, typer.Option("--val-fraction", help="Share of documents held out for validation.")] = 0.05,
    add_bos: Annotated[bool, typer.Option("--add-bos", help="Start every document with <|bos|>.")] = False,
    shard_tokens: Annotated[int, typer.Option("--shard-tokens", help="Tokens per shard (closed at a document end).")] = 100_000_000,
    workers: Annotated[int, typer.Option("--workers", help="Encoding processes; 0 = one per core. Does not change the result.")] = 0,
    batch_size: Annotated[int, typer.Option("--batch-size", help="Documents per encoding batch.")] = 2048,
    fast: Annotated[bool, typer.Option("--fast/--no-fast", help="Encode through tiktoken built from our merges, when it applies.")] = True,
    config: ConfigOption = None,
    seed: SeedOption = 0,
    force: ForceOption = False,
) -> None:
    """Encode a corpus into train/validation token shards."""
    from llmkit.config import explicit_params, resolve
    from llmkit.tokenizer.encode_corpus import TokenizeConfig, tokenize_corpus

    if batch_size < 1:
        raise UserError(f"--batch-size must be at least 1, got {batch_size}")
    cfg = resolve(TokenizeConfig, file=config, section="tokenize", explicit=explicit_params(ctx))
    path = tokenize_corpus(corpus, tokenizer, out, cfg, seed=seed, workers=workers, batch_size=batch_size, use_fast=fast, force=force)
    _print_tokens_summary(path)


def _print_summary(path: Path, keys: list[str]) -> None:
    from rich.table import Table

    from llmkit import artifacts
    from llmkit.console import out

    art = artifacts.load(path)
    table = Table(title=f"{art.kind} artifact {path}", show_header=False)
    for key in keys:
        table.add_row(key, str(art.stats.get(key)))
    table.add_row("fingerprint", art.fingerprint[:16])
    out.print(table)


def _print_tokens_summary(path: Path) -> None:
    from rich.table import Table

    from llmkit import artifacts
    from llmkit.console import out

    art = artifacts.load(path)
    stats = art.stats
    table = Table(title=f"tokens artifact {path} ({stats['dtype']}, vocab {stats['vocab_size']}, {stats['encoder']})")
    for column in ("split", "documents", "tokens", "bytes", "bytes/token", "shards"):
        table.add_column(column, justify="left" if column == "split" else "right")
    from llmkit.data.shards import SPLITS

    for split in SPLITS:
        s = stats[split]
        ratio = f"{s['bytes'] / s['tokens']:.3f}" if s["tokens"] else "-"
        table.add_row(split, f"{s['documents']:,}", f"{s['tokens']:,}", f"{s['bytes']:,}", ratio, str(len(s["shards"])))
    out.print(table)
    out.print(f"{stats['mb_per_s']} MB/s, {stats['tokens_per_s']:,} tokens/s; fingerprint {art.fingerprint[:16]}", soft_wrap=True)
