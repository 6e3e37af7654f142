"""A transformers model directory: its file names, reading it (config.json, safetensors
weights, never pickle) and what llmkit's export writes beside the HF files."""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch

from llmkit.errors import UserError

LLMKIT_CONFIG_FILE = "llmkit_model_config.json"  # written on export so a round trip keeps every field
PICKLE_WEIGHTS = ("*.bin", "*.pt", "*.pth", "*.ckpt", "*.pkl")
DTYPES = {"float32": torch.float32, "bfloat16": torch.bfloat16, "float16": torch.float16}
HF_WEIGHTS = "model.safetensors"
HF_INDEX = "model.safetensors.index.json"


def torch_dtype(name: str) -> torch.dtype:
    if name not in DTYPES:
        raise UserError(f"unknown dtype {name!r}; choose one of: {', '.join(DTYPES)}")
    return DTYPES[name]


def read_config_json(src: Path) -> dict:
    if not src.exists():
        raise UserError(f"no such directory: {src}; pass a local Hugging Face model directory")
    if not src.is_dir():
        raise UserError(f"{src} is a file; pass a local Hugging Face model directory (config.json + *.safetensors)")
    path = src / "config.json"
    if not path.is_file():
        if (src / "manifest.json").is_file():
            raise UserError(f"{src} is an llmkit artifact, not a Hugging Face model directory: llmkit reads it as it is "
                            "(llmkit export writes a Hugging Face folder from a checkpoint)")
        raise UserError(f"{src} has no config.json; it is not a Hugging Face model directory (save one with save_pretrained)")
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except (json.JSONDecodeError, UnicodeDecodeError, RecursionError) as exc:  # (nesting past Python's stack: not JSON we read)
        raise UserError(f"{path} is not valid JSON ({exc}); re-save the model with save_pretrained") from None
    if not isinstance(data, dict):
        raise UserError(f"{path} does not hold a JSON object; re-save the model with save_pretrained")
    return data


def weight_files(src: Path) -> list[Path]:
    """The safetensors files of a transformers directory (sharded or not); pickle is refused. Where
    both a model.safetensors and an index are there (one left by an earlier save_pretrained, which
    removes old shards but neither of these), model.safetensors is read, as transformers reads it."""
    index = src / HF_INDEX
    if index.is_file() and (src / HF_WEIGHTS).is_file():
        from llmkit.console import note

        note(f"{src} holds both {HF_WEIGHTS} and {HF_INDEX} (one left by an earlier save): reading {HF_WEIGHTS}, as "
             "transformers does; remove the other to be sure which weights are meant")
        return [src / HF_WEIGHTS]
    if index.is_file():
        try:
            names = sorted(set(json.loads(index.read_text(encoding="utf-8"))["weight_map"].values()))
        except (json.JSONDecodeError, UnicodeDecodeError, KeyError, TypeError, AttributeError, RecursionError) as exc:
            raise UserError(f"{index} is not a valid safetensors index ({exc}); re-save the model") from None
        # Checked as written, not resolved: a Hub cache snapshot's shards are links into ../../blobs
        outside = [n for n in names if not isinstance(n, str) or Path(n).is_absolute() or ".." in Path(n).parts]
        if outside:
            raise UserError(f"{index} names weight shard {outside[0]!r}, outside {src}; keep the shards in the model directory")
        missing = [n for n in names if not (src / n).is_file()]
        if missing:
            raise UserError(f"{src} lacks weight shard {missing[0]} named in {HF_INDEX}; copy the whole model directory")
        return [src / n for n in names]
    if (src / HF_WEIGHTS).is_file():
        return [src / HF_WEIGHTS]
    pickled = sorted(p.name for pattern in PICKLE_WEIGHTS for p in src.glob(pattern))
    if pickled:
        raise UserError(
            f"{src} has only pickle weights ({pickled[0]}), which llmkit never loads (unpickling can run code); "
            "convert them to safetensors first, e.g. model.save_pretrained(dir, safe_serialization=True) in a trusted environment"
        )
    raise UserError(f"{src} has no {HF_WEIGHTS}; save the model with save_pretrained (safetensors)")


def read_hf_state(files: list[Path]) -> dict[str, torch.Tensor]:
    from safetensors import SafetensorError
    from safetensors.torch import load_file

    state: dict[str, torch.Tensor] = {}
    for path in files:
        try:
            state.update(load_file(str(path)))
        except (SafetensorError, OSError) as exc:
            raise UserError(f"cannot read {path} as safetensors ({exc}); re-save the model") from exc
    return state


def check_float_weights(state: dict[str, torch.Tensor]) -> None:
    """Weights (buffers already dropped) in a float dtype llmkit computes in: fp8 or integer-packed
    ones are a quantized model, which would import as nonsense."""
    odd = next((name for name, tensor in state.items() if tensor.dtype not in (torch.float64, torch.float32, torch.bfloat16, torch.float16)), None)
    if odd is not None:
        raise UserError(f"{odd} is stored as {str(state[odd].dtype).removeprefix('torch.')}; llmkit imports float32, bfloat16 "
                        "or float16 weights: import the unquantized model")



def _read_provenance(src: Path) -> dict:
    try:
        data = json.loads((src / LLMKIT_CONFIG_FILE).read_text(encoding="utf-8"))
    except (OSError, json.JSONDecodeError, UnicodeDecodeError, RecursionError):
        return {}
    return data if isinstance(data, dict) else {}


def exported_files(folder: Path) -> dict[str, str]:
    """sha256 of the files beside the weights that the provenance speaks for (tokenizer, configs,
    chat template): export records them, import compares them."""
    from llmkit.artifacts import sha256_file

    return {path.name: sha256_file(path) for path in sorted(folder.iterdir())
            if path.is_file() and path.name != LLMKIT_CONFIG_FILE and not path.name.endswith((".safetensors", HF_INDEX))
            and not any(path.match(pattern) for pattern in PICKLE_WEIGHTS)}


def _changed_files(src: Path, recorded: Any) -> set[str]:
    """The files an llmkit export recorded that differ now (edited or re-saved in transformers,
    added or removed); none where an export from before 2026-12-05 recorded no files."""
    if not isinstance(recorded, dict):
        return set()
    now = exported_files(src)
    return {name for name in set(recorded) | set(now) if recorded.get(name) != now.get(name)}


# What each part of the export's record speaks for: a part whose files changed since the export
# (a chat template set in transformers, a tokenizer or config re-saved) is read from the folder
# instead. The document start is the weights' (the tokens they were trained after), not a file's.
PROVENANCE_FILES = {
    "model_config": {"config.json"},
    "task": {"tokenizer_config.json", "chat_template.jinja", "tokenizer.json"},
    "tokenizer_post_processor": {"tokenizer.json"},
    # (an export of a chat fine-tune records none: its task's role tokens are the stops, and go stale with it)
    "end_of_turn": {"generation_config.json", "tokenizer_config.json", "chat_template.jinja", "tokenizer.json"},
}


@dataclass
class ExportRecord:
    """What llmkit's export wrote beside the HF files (`parts`: the original ModelConfig, the
    document start, the task, ...), less the parts whose files changed since the export (`stale`,
    changed in `files`); no parts for a folder llmkit did not export, or an unreadable record."""

    parts: dict[str, Any]
    stale: list[str]
    files: list[str]


def export_record(src: Path) -> ExportRecord:
    parts = _read_provenance(src)
    changed = _changed_files(src, parts.get("files"))
    stale = [part for part, files in PROVENANCE_FILES.items() if files & changed and part in parts]
    behind = sorted(changed & set().union(*(PROVENANCE_FILES[part] for part in stale))) if stale else []
    return ExportRecord({k: v for k, v in parts.items() if k not in stale}, stale, behind)
