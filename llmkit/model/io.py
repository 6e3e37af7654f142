"""Model weights and checkpoint artifacts on disk: safetensors + JSON, never pickle.

A checkpoint artifact (kind "checkpoint") holds:
  model.safetensors     the weights (a tied output head is stored once, as the embedding)
  model_config.json     every ModelConfig field, incl. `arch` and `objective`
  tokenizer/            a copy of the tokenizer (tokenizer.json, token_bytes.npy)
  task.json             optional (finetune): task, label names, prompt template (llmkit.model.records)
  training_state.*      optimizer, schedule, RNG and data position for --resume (llmkit/train)
"""

from __future__ import annotations

import json
import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch

from llmkit.errors import UserError
from llmkit.model.adapters import is_adapter_key
from llmkit.model.gpt import ModelConfig
from llmkit.model.presets import build_model
from llmkit.model.records import TaskRecord, read_task
from llmkit.outputs import default_permissions

WEIGHTS = "model.safetensors"
MODEL_CONFIG = "model_config.json"
TOKENIZER_DIR = "tokenizer"


def tied_names(model: torch.nn.Module) -> set[str]:
    """Parameter names that alias an earlier parameter (tied embeddings): stored once."""
    seen: dict[int, str] = {}
    tied = set()
    for name, param in model.named_parameters(remove_duplicate=False):
        if id(param) in seen:
            tied.add(name)
        else:
            seen[id(param)] = name
    return tied


def weights_state_dict(model: torch.nn.Module, state_dict: dict[str, torch.Tensor] | None = None) -> dict[str, torch.Tensor]:
    """A contiguous CPU state dict without aliased duplicates, ready for safetensors."""
    state = state_dict if state_dict is not None else model.state_dict()
    tied = tied_names(model)
    return {k: v.detach().to("cpu").contiguous() for k, v in state.items() if k not in tied}


def save_weights(model: torch.nn.Module, directory: Path, state_dict: dict[str, torch.Tensor] | None = None) -> None:
    from safetensors.torch import save_file

    directory = Path(directory)
    save_file(weights_state_dict(model, state_dict), str(directory / WEIGHTS), metadata={"format": "pt"})
    default_permissions(directory / WEIGHTS)  # (written in place by a training run: no rename fixes it)
    config: ModelConfig = model.config
    (directory / MODEL_CONFIG).write_text(json.dumps(config.to_dict(), indent=2, sort_keys=True) + "\n", encoding="utf-8")


def read_weights(path: Path, device: str = "cpu") -> dict[str, torch.Tensor]:
    """A safetensors file's tensors; a damaged or foreign file (a pickle under the name) is a one-line error."""
    from safetensors import SafetensorError
    from safetensors.torch import load_file

    from llmkit.artifacts import checked_as_read

    open(path, "rb").close()  # (safetensors calls a file it may not read "No such file": a PermissionError says it)
    try:
        with checked_as_read(path):
            return load_file(str(path), device=device)
    except (SafetensorError, OSError, ValueError) as exc:
        raise unreadable_weights(path, exc) from None


_LAYER = re.compile(r"(?:^|\.)blocks\.(\d+)\.|(?:^|\.)lstm\.weight_ih_l(\d+)$")  # a GPT block's, an LSTM layer's


def refuse_a_config_its_weights_do_not_fit(config: ModelConfig, path: Path) -> None:
    """The config against the weights file's header, where a loader is about to build a model of
    its size: an edited, re-signed model_config.json (vocab_size 2e9, n_layer 10**6, mlp_ratio 1e8)
    allocated until memory ran out, or ended as an unexpected error. The embedding and the layer
    count first (a model of 10**6 layers is slow to build even without memory), then every tensor
    against a model built without memory (meta). An intermediate LoRA checkpoint (adapters only, the
    layers it adapts) is refused as such here: no loader takes one. The context, which RoPE holds in no
    weight but builds its tables for as the model is built (64 GB at 10**9), is capped."""
    from llmkit.model.hf_config import LARGEST_SIZE

    if config.context_length > LARGEST_SIZE:
        raise UserError(f"{path.parent / MODEL_CONFIG} says context_length {config.context_length:,}, past the "
                        f"{LARGEST_SIZE:,} llmkit builds; the checkpoint is damaged, rebuild it")
    try:
        stored = stored_shapes(path)
    except Exception:  # (an unreadable or missing file: read_weights names it)
        return
    shapes = {name: tuple(tensor.shape) for name, tensor in stored.items()}
    if any(map(is_adapter_key, shapes)):
        raise _intermediate_lora(path)
    embedding = next((shape for name, shape in shapes.items() if name.split(".")[-2:] == ["tok_emb", "weight"]), None)
    if embedding is not None and embedding != (config.vocab_size, config.n_embd):
        raise UserError(f"{path.parent / MODEL_CONFIG} makes the embedding {(config.vocab_size, config.n_embd)} (vocab_size, "
                        f"n_embd), but {path.name} holds {embedding}; the two do not belong together: rebuild the checkpoint")
    layers = {int(next(g for g in found.groups() if g is not None)) for found in map(_LAYER.search, shapes) if found}
    if layers and max(layers) + 1 != config.n_layer:
        raise UserError(f"{path.parent / MODEL_CONFIG} says n_layer {config.n_layer}, but {path.name} holds {max(layers) + 1} "
                        "layer(s); the two do not belong together: rebuild the checkpoint")
    # (meta: no memory; its own generator: a reader that built a model moved torch's global draws)
    with torch.random.fork_rng(devices=[]), torch.device("meta"):
        try:
            model = build_model(config, initialise=False)
        except Exception as exc:  # (an mlp_ratio of 1e30: a size no tensor takes)
            reason = " ".join(str(exc).split("Exception raised from")[0].split())[:120]  # (not torch's C++ frames)
            raise UserError(f"{path.parent / MODEL_CONFIG} makes no model ({reason}); the checkpoint is damaged, rebuild "
                            "it") from None
    check_shapes(model, stored, path)


def _intermediate_lora(path: Path) -> UserError:
    return UserError(f"{path.parent} is an intermediate LoRA checkpoint (unmerged adapters); use the finished run "
                     "directory, whose weights are merged")


def unreadable_weights(path: Path, exc: Exception) -> UserError:
    return UserError(f"{path} is not a readable safetensors file ({' '.join(str(exc).split())[:120]}); "
                     "the checkpoint is damaged, rebuild it")


def check_shapes(model: torch.nn.Module, state: dict[str, torch.Tensor], path: Path, *, config_file: str = MODEL_CONFIG,
                 fix: str = "rebuild the checkpoint") -> None:
    """Every stored tensor has the shape the model config gives it (else load_state_dict's long error).
    `state` may hold meta tensors: only shapes are compared."""
    expected = model.state_dict()
    wrong = [k for k, v in state.items() if k in expected and tuple(v.shape) != tuple(expected[k].shape)]
    if wrong:
        raise UserError(
            f"{path}: {wrong[0]} has shape {tuple(state[wrong[0]].shape)} but {config_file} makes "
            f"{tuple(expected[wrong[0]].shape)}; the two do not belong together, {fix}"
        )


def stored_shapes(path: Path) -> dict[str, torch.Tensor]:
    """A safetensors file's tensors as meta tensors (names and shapes from its header; no data read)."""
    from safetensors import safe_open

    with safe_open(str(path), framework="pt") as stored:
        return {name: torch.empty(stored.get_slice(name).get_shape(), device="meta") for name in stored.keys()}


def load_weights(model: torch.nn.Module, path: Path) -> None:
    load_state(model, read_weights(path, device=str(next(model.parameters()).device)), path)


def load_state(model: torch.nn.Module, state: dict[str, torch.Tensor], path: Path) -> None:
    """`state` (read from `path`, or made from it) into `model`: every tensor it has, no other."""
    check_shapes(model, state, path)
    missing, unexpected = model.load_state_dict(state, strict=False)
    missing = set(missing) - tied_names(model)
    if any(map(is_adapter_key, unexpected)):
        raise _intermediate_lora(path)
    if missing or unexpected:
        raise UserError(
            f"{path} does not match its model_config.json (missing {sorted(missing)[:3]}, "
            f"unexpected {sorted(unexpected)[:3]}); the checkpoint is damaged, rebuild it"
        )


def read_model_config(directory: Path) -> ModelConfig:
    path = Path(directory) / MODEL_CONFIG
    if not path.is_file():
        raise UserError(f"{directory} has no {MODEL_CONFIG}; it is not a complete checkpoint, rebuild it")
    from llmkit.artifacts import checked_as_read

    try:
        with checked_as_read(path):  # (a same-size edit, rope_theta 10000 -> 90000, was used as the recorded model)
            return ModelConfig.from_dict(json.loads(path.read_text(encoding="utf-8")))
    except (ValueError, TypeError, RecursionError, OverflowError) as exc:  # (an mlp_ratio of Infinity: OverflowError)
        raise UserError(f"{path} is not a valid model config ({exc}); rebuild the checkpoint") from None


def load_model(directory: Path, device: str | torch.device = "cpu") -> torch.nn.Module:
    """Build the model from model_config.json and load model.safetensors (eval mode)."""
    directory = Path(directory)
    config = read_model_config(directory)
    refuse_a_config_its_weights_do_not_fit(config, directory / WEIGHTS)
    with torch.device(device):
        model = build_model(config, initialise=False)
    load_weights(model, directory / WEIGHTS)
    return model.eval()


@dataclass
class LoadedCheckpoint:
    model: torch.nn.Module  # a SequenceClassifier (with `.classify`) for a classification fine-tune
    config: ModelConfig
    tokenizer: Any  # llmkit.data.tokenizer.TextTokenizer
    task: TaskRecord | None
    artifact: Any  # llmkit.artifacts.Artifact (the first member's, for an ensemble)
    members: list[Any] = field(default_factory=list)  # every member's artifact (llmkit.model.ensemble)
    sampling: Any = None  # llmkit.model.records.SamplingRecord: how its makers sample it (an import's), or None


def load_checkpoint(path: Path | str, device: str | torch.device = "cpu", *, purpose: str | None = None) -> LoadedCheckpoint:
    """Load a checkpoint artifact: model (eval mode) on `device`, its config, tokenizer and task.

    The one loader of the stages that use a finished model (eval, generate, chat, export). With
    `purpose` (what the caller does with a left-to-right language model, e.g. "generation"), a
    classifier or a masked LM is refused by a message naming it, before any weight is read.
    """
    from llmkit import artifacts
    from llmkit.data.tokenizer import load_tokenizer
    from llmkit.model.classifier import SequenceClassifier

    art = artifacts.load(path, kind="checkpoint")
    art.file(WEIGHTS)
    if not (art.path / TOKENIZER_DIR / "tokenizer.json").is_file():
        raise UserError(f"checkpoint {path} has no {TOKENIZER_DIR}/tokenizer.json; rebuild it (or copy its tokenizer into {path}/{TOKENIZER_DIR})")
    config = read_model_config(art.path)
    task = read_task(art)
    classifier = task is not None and task.is_classifier
    if purpose is not None and classifier:
        raise UserError(
            f"{path} is a classifier (a classification checkpoint, labels {', '.join(map(str, task.labels or []))}); it predicts "
            f"labels, not text, so it cannot be used for {purpose}: evaluate it with llmkit eval -m accuracy,f1"
        )
    if purpose is not None and config.objective == "mlm":
        raise UserError(
            f"{path} is a masked LM (objective mlm): it fills in blanks and has no left-to-right likelihood, so it cannot be "
            f"used for {purpose}; fine-tune it for classification (llmkit finetune --task classify) and evaluate that"
        )
    # A LoRA run's step checkpoint holds what trained alone: its model is the base's weights with them merged.
    lora_step = task is not None and task.lora is not None and not task.lora.merged
    if lora_step:
        from llmkit.model.adapters import step_checkpoint_weights

        state = step_checkpoint_weights(art, str(torch.device(device)))
    else:
        refuse_a_config_its_weights_do_not_fit(config, art.path / WEIGHTS)  # (before a model of its size is built)
    with torch.device(device):
        model = build_model(config, initialise=False)  # every weight comes from the file
        if classifier:
            model = SequenceClassifier(model, len(task.labels or []))
    if lora_step:
        load_state(model, state, art.path / WEIGHTS)
    else:
        load_weights(model, art.path / WEIGHTS)
    tokenizer = load_tokenizer(art.path / TOKENIZER_DIR)
    if task is not None:  # fine-tuned in llmkit: prompted in the format it learned (task.json), not the import's template
        # (which is that format where the fine-tune learned the model's own chat template: task.json keeps it)
        tokenizer.own_chat_template = (task.template or {}).get("jinja") if isinstance(task.template, dict) else None
    from llmkit.model.records import read_sampling

    return LoadedCheckpoint(model=model.eval(), config=config, tokenizer=tokenizer, task=task, artifact=art,
                            sampling=read_sampling(art))
