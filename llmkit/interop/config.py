"""The options of `llmkit export` and `llmkit import` (docs/interop.md): declared once, here."""

from __future__ import annotations

from dataclasses import dataclass

from llmkit.options import Options, option, unused_seed_option

DTYPES = ("float32", "bfloat16", "float16")


@dataclass
class ExportConfig(Options):
    format: str = option("hf", "Export format: hf (transformers, safetensors).", flags=("--format", "-f"), choices=("hf",))
    dtype: str = option("float32", "Weight dtype: float32, bfloat16 or float16.", choices=DTYPES)


@dataclass
class ImportConfig(Options):
    dtype: str = option("float32", "Stored weight dtype: float32, bfloat16 or float16.", choices=DTYPES)
    seed: int = unused_seed_option("import")
