"""`llmkit tokenizer ...` and `llmkit tokenize` (placeholder until the tokenizer stage lands)."""

import typer

from llmkit.errors import UserError

tokenizer_app = typer.Typer(no_args_is_help=True)


@tokenizer_app.command("train")
def train() -> None:
    """Train a byte-level BPE tokenizer on a corpus."""
    raise UserError("llmkit tokenizer train is not implemented yet")


def tokenize() -> None:
    """Encode a corpus into token shards."""
    raise UserError("llmkit tokenize is not implemented yet")
