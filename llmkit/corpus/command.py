"""`llmkit clean` (placeholder until the clean stage lands)."""

from llmkit.errors import UserError


def clean() -> None:
    """Clean and de-duplicate a text corpus into a corpus artifact."""
    raise UserError("llmkit clean is not implemented yet")
