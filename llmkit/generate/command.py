"""`llmkit generate` and `llmkit chat` (placeholder until the generation stage lands)."""

from llmkit.errors import UserError


def generate() -> None:
    """Generate text from a checkpoint."""
    raise UserError("llmkit generate is not implemented yet")


def chat() -> None:
    """Chat with a fine-tuned checkpoint in the terminal."""
    raise UserError("llmkit chat is not implemented yet")
