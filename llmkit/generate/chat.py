"""`llmkit chat` (placeholder until the fine-tuning stage lands)."""

from llmkit.errors import UserError


def chat() -> None:
    """Chat with a fine-tuned checkpoint in the terminal."""
    raise UserError("llmkit chat is not implemented yet")
