"""`llmkit export` and `llmkit import`: Hugging Face transformers interop (llmkit/model/hf.py)."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Annotated, Optional

import typer

from llmkit.errors import UsageError


@dataclass
class ExportConfig:
    format: str = "hf"
    dtype: str = "float32"  # float32 | bfloat16 | float16


@dataclass
class ImportConfig:
    dtype: str = "float32"  # float32 | bfloat16 | float16


FORMATS = ("hf",)


def export_model(
    ctx: typer.Context,
    checkpoint: Annotated[Path, typer.Argument(help="Checkpoint artifact directory.")],
    out: Annotated[Path, typer.Option("--out", "-o", help="Output directory (a transformers model folder).")],
    format: Annotated[str, typer.Option("--format", "-f", help="Export format: hf (transformers, safetensors).")] = "hf",
    dtype: Annotated[str, typer.Option(help="Weight dtype: float32, bfloat16 or float16.")] = "float32",
    config: Annotated[Optional[Path], typer.Option("--config", help="TOML/YAML options file (an export table or top-level keys).")] = None,
    force: Annotated[bool, typer.Option("--force", help="Replace the output directory if it exists.")] = False,
) -> None:
    """Export a checkpoint to a Hugging Face transformers directory (GPT-2 or Llama class)."""
    from llmkit.config import explicit_params, resolve

    settings = resolve(ExportConfig, file=config, section="export", explicit=explicit_params(ctx))
    if settings.format not in FORMATS:
        raise UsageError(f"unknown export format {settings.format!r}; choose one of: {', '.join(FORMATS)}")
    from llmkit.console import out as console
    from llmkit.model.hf import export_hf

    path = export_hf(checkpoint, out, force=force, dtype=settings.dtype)
    model_type = _model_type(path)
    console.print(
        f"[green]exported[/] {checkpoint} -> {path} ({model_type}); load it with "
        f"AutoModelForCausalLM.from_pretrained({str(path)!r})",
        soft_wrap=True,
        highlight=False,
    )


def import_model(
    ctx: typer.Context,
    source: Annotated[Path, typer.Argument(help="Local Hugging Face model directory (config.json, *.safetensors, tokenizer).")],
    out: Annotated[Path, typer.Option("--out", "-o", help="Output checkpoint artifact directory.")],
    dtype: Annotated[str, typer.Option(help="Stored weight dtype: float32, bfloat16 or float16.")] = "float32",
    config: Annotated[Optional[Path], typer.Option("--config", help="TOML/YAML options file (an import table or top-level keys).")] = None,
    seed: Annotated[int, typer.Option(help="Recorded in the manifest (import itself is deterministic).")] = 0,
    force: Annotated[bool, typer.Option("--force", help="Replace the output artifact if it exists.")] = False,
) -> None:
    """Import a local Hugging Face GPT-2 or Llama directory as a checkpoint artifact."""
    from llmkit.config import explicit_params, resolve

    settings = resolve(ImportConfig, file=config, section="import", explicit=explicit_params(ctx))
    from llmkit import artifacts
    from llmkit.console import out as console
    from llmkit.model.hf import import_hf

    path = import_hf(source, out, force=force, seed=seed, dtype=settings.dtype)
    art = artifacts.load(path, kind="checkpoint")
    console.print(
        f"[green]imported[/] {source} ({art.config['model_type']}, {art.stats['parameters']:,} parameters) -> {path}",
        soft_wrap=True,
        highlight=False,
    )


def _model_type(path: Path) -> str:
    import json

    return json.loads((path / "config.json").read_text(encoding="utf-8")).get("model_type", "?")
