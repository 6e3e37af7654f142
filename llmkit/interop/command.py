"""`llmkit export` and `llmkit import`: the commands (llmkit/interop/)."""

from __future__ import annotations

from pathlib import Path

from llmkit.interop.config import ExportConfig, ImportConfig
from llmkit.stage_command import argument, stage_command


def _export(config: ExportConfig, *, checkpoint: Path, out: Path, force: bool) -> None:
    """Export a checkpoint to a Hugging Face transformers directory (GPT-2 or Llama class)."""
    import json

    from llmkit.console import out as console, styled
    from llmkit.interop.export import export_hf

    path = export_hf(checkpoint, out, force=force, dtype=config.dtype)
    model_type = json.loads((path / "config.json").read_text(encoding="utf-8")).get("model_type", "?")
    console.print(
        styled("exported", "green", f" {checkpoint} -> {path} ({model_type}); load it with "
               f"AutoModelForCausalLM.from_pretrained({str(path)!r})"),
        soft_wrap=True,
        highlight=False,
    )


def _import(config: ImportConfig, *, source: Path, out: Path, force: bool) -> None:
    """Import a local Hugging Face GPT-2 or Llama directory as a checkpoint artifact."""
    from llmkit import artifacts
    from llmkit.console import out as console, styled
    from llmkit.inspect_view import next_after_checkpoint
    from llmkit.interop.importer import import_hf
    from llmkit.model.records import CheckpointStats

    path = import_hf(source, out, force=force, dtype=config.dtype)
    art = artifacts.load(path, kind="checkpoint")
    console.print(
        styled("imported", "green", f" {source} ({art.config['model_type']}, {CheckpointStats.of(art).params:,} parameters) -> {path}, "
                                    f"fingerprint {art.short_fingerprint}"),
        soft_wrap=True,
        highlight=False,
    )
    next_after_checkpoint(art)


export_model = stage_command(
    "export", ExportConfig, _export,
    arguments=[argument("checkpoint", "Checkpoint artifact directory.")],
    out="Output directory (a transformers model folder).",
    force="Replace the output directory if it exists.",
    writes_artifact=False,
)
import_model = stage_command(
    "import", ImportConfig, _import,
    arguments=[argument("source", "Local Hugging Face model directory (config.json, *.safetensors, tokenizer).")],
    out="Output checkpoint artifact directory.",
    force="Replace the output artifact if it exists.",
)
