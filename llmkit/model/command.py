"""`llmkit export` and `llmkit import` (placeholder until HF interop lands)."""

from llmkit.errors import UserError


def export_model() -> None:
    """Export a checkpoint to a Hugging Face transformers directory."""
    raise UserError("llmkit export is not implemented yet")


def import_model() -> None:
    """Import a local Hugging Face GPT-2 or Llama directory as a checkpoint."""
    raise UserError("llmkit import is not implemented yet")
