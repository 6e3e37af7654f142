"""`llmkit eval` (placeholder until the evaluation stage lands)."""

from llmkit.errors import UserError


def evaluate() -> None:
    """Evaluate a checkpoint or a predictions file: perplexity, bpb, accuracy/F1, BLEU, ROUGE."""
    raise UserError("llmkit eval is not implemented yet")
