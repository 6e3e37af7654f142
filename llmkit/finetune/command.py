"""`llmkit finetune` (placeholder until the fine-tuning stage lands)."""

from llmkit.errors import UserError


def finetune() -> None:
    """Fine-tune a checkpoint: SFT, classification, LoRA."""
    raise UserError("llmkit finetune is not implemented yet")
