"""`llmkit pretrain` and `llmkit finetune` (placeholder until the training stage lands)."""

from llmkit.errors import UserError


def pretrain() -> None:
    """Pretrain a GPT-style decoder from scratch on token shards."""
    raise UserError("llmkit pretrain is not implemented yet")


def finetune() -> None:
    """Fine-tune a checkpoint: SFT, classification, LoRA."""
    raise UserError("llmkit finetune is not implemented yet")
