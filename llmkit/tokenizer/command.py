"""`llmkit tokenizer train|encode|decode` and `llmkit tokenize`: option parsing and printing only."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer

from llmkit.errors import UsageError
from llmkit.stage_command import argument, stage_command
from llmkit.tokenizer.config import TokenizeConfig, TokenizerTrainConfig

def _train(config: TokenizerTrainConfig, *, inputs: list[Path], out: Path, force: bool) -> None:
    """Train a byte-level BPE tokenizer on a corpus."""
    from llmkit.tokenizer.train import train_tokenizer

    from llmkit.console import next_step, shell_word, wrote

    path = train_tokenizer(inputs, out, config, force=force)
    wrote(_print_summary(path, ["vocab_size", "training_pieces", "training_bytes", "bytes_per_token", "tokens_per_word", "train_seconds"]))
    if len(inputs) == 1 and Path(inputs[0]).is_dir():  # a corpus artifact
        next_step(f"llmkit tokenize {shell_word(inputs[0])} -t {shell_word(path)} -o TOKENS")
    else:  # text files: tokenize reads a corpus of them
        files = " ".join(shell_word(p) for p in inputs)
        next_step(f"llmkit clean {files} -o CORPUS, then llmkit tokenize CORPUS -t {shell_word(path)} -o TOKENS")


train = stage_command(
    "tokenizer", TokenizerTrainConfig, _train,
    arguments=[argument("inputs", "A corpus artifact (llmkit clean), or UTF-8 text files.", type=list[Path])],
    out="Output tokenizer artifact directory.",
)


def encode(
    tokenizer: Annotated[Path, typer.Argument(help="Tokenizer artifact (or a tokens/checkpoint artifact).")],
    text: Annotated[str, typer.Argument(help="Text to encode (after `--` where it starts with -).")],
) -> None:
    """Show the token ids and pieces of a text."""
    from rich.table import Table
    from rich.text import Text

    from llmkit.console import out

    try:
        text.encode("utf-8")
    except UnicodeEncodeError:  # (bytes a shell passed that are not UTF-8: the library's TypeError said "unexpected")
        raise UsageError("TEXT is not valid Unicode text (not UTF-8); give it in UTF-8") from None
    tok = _checked_tokenizer(tokenizer)
    ids = tok.encode(text)
    table = Table(title=f"{len(ids)} tokens, {len(text.encode('utf-8'))} bytes")
    for column in ("#", "id", "piece", "bytes"):
        table.add_column(column, justify="right" if column != "piece" else "left")
    for position, idx in enumerate(ids):
        table.add_row(str(position), str(idx), Text(_visible(tok.id_to_piece(idx))), str(int(tok.token_bytes[idx])))
    out.print(table)
    out.print(" ".join(map(str, ids)), soft_wrap=True)


def _visible(piece: str) -> str:
    """Whitespace made visible, so that ' the' and 'the' differ on screen; other control characters
    as `\\xNN` (a raw ESC in a piece reached the terminal, which acts on it)."""
    shown = piece.replace(" ", "␣").replace("\n", "↵").replace("\t", "⇥").replace("\r", "␍")
    return "".join(f"\\x{ord(c):02x}" if ord(c) < 0x20 or 0x7F <= ord(c) < 0xA0 else c for c in shown)


def decode(
    tokenizer: Annotated[Path, typer.Argument(help="Tokenizer artifact (or a tokens/checkpoint artifact).")],
    ids: Annotated[list[int], typer.Argument(help="Token ids, separated by spaces.")],
) -> None:
    """Turn token ids back into text (negative ids after `--`)."""
    import sys

    tok = _checked_tokenizer(tokenizer)
    bad = [i for i in ids if not 0 <= i < tok.vocab_size]
    if bad:
        raise UsageError(f"token id(s) {', '.join(map(str, bad))} outside the vocabulary 0..{tok.vocab_size - 1}")
    from llmkit.console import for_a_terminal, out

    text = tok.decode(ids)
    if out.is_terminal:  # without the control characters a terminal would act on
        from rich.text import Text

        out.print(Text(for_a_terminal(text)), soft_wrap=True)
    else:  # piped or to a file: the text as decoded (rich would expand tabs and drop carriage returns), as generate's
        sys.stdout.write(text + "\n")
        sys.stdout.flush()


def _checked_tokenizer(path: Path):
    """The tokenizer of a tokenizer, tokens or checkpoint artifact, after the cheap checks every stage
    makes of its inputs (a tokenizer.json cut or replaced gave other ids without a word); a bare
    `tokenizer/` folder as it is."""
    from llmkit import artifacts
    from llmkit.data.tokenizer import load_tokenizer

    if (Path(path) / artifacts.MANIFEST).is_file():
        artifacts.load(path, ("tokenizer", "tokens", "checkpoint"))
    return load_tokenizer(path)


def _tokenize(config: TokenizeConfig, *, corpus: Path, tokenizer: Path, out: Path, force: bool) -> None:
    """Encode a corpus into train/validation token shards."""
    from llmkit.tokenizer.encode_corpus import tokenize_corpus

    from llmkit.console import next_step, shell_word, wrote

    path = tokenize_corpus(corpus, tokenizer, out, config, force=force)
    wrote(_print_tokens_summary(path))
    next_step(f"llmkit pretrain {shell_word(path)} -o RUN")


tokenize = stage_command(
    "tokenize", TokenizeConfig, _tokenize,
    arguments=[
        argument("corpus", "Corpus artifact (llmkit clean)."),
        argument("tokenizer", "Tokenizer artifact (llmkit tokenizer train), or a tokens artifact or checkpoint to use "
                 "its tokenizer.",
                 flags=("--tokenizer", "-t")),
    ],
    out="Output tokens artifact directory.",
)


def _print_summary(path: Path, keys: list[str]):
    from rich.table import Table

    from llmkit import artifacts
    from llmkit.console import figure, out

    art = artifacts.load(path)
    table = Table(title=f"{art.kind} artifact", show_header=False)
    for key in keys:
        table.add_row(key, figure(art.stats.get(key), 3))
    out.print(table)
    return art


def _print_tokens_summary(path: Path):
    from rich.table import Table

    from llmkit import artifacts
    from llmkit.console import out

    art = artifacts.load(path)
    stats = art.stats
    table = Table(title=f"tokens ({stats['dtype']}, vocab {stats['vocab_size']:,}, {stats['encoder']})")
    for column in ("split", "documents", "tokens", "bytes", "bytes/token", "shards"):
        table.add_column(column, justify="left" if column == "split" else "right")
    from llmkit.data.shards import SPLITS

    for split in SPLITS:
        s = stats[split]
        ratio = f"{s['bytes'] / s['tokens']:.3f}" if s["tokens"] else "-"
        table.add_row(split, f"{s['documents']:,}", f"{s['tokens']:,}", f"{s['bytes']:,}", ratio, str(len(s["shards"])))
    out.print(table)
    out.print(f"{stats['mb_per_s']} MB/s, {stats['tokens_per_s']:,} tokens/s", soft_wrap=True)
    return art
