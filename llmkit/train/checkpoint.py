"""Training state for exact resume, stored without pickle.

  training_state.safetensors   optimizer tensors ("optim/<param fqn>/<key>") and every rank's
                               torch RNG states ("rng/cpu/<rank>", "rng/cuda/<rank>")
  training_state.json          step, samples seen, world size, optimizer param groups and
                               scalar state, the schedule's settings; nothing wall-clock

State is gathered as full (unsharded) tensors keyed by parameter name (through
torch.distributed.checkpoint.state_dict where parameters are sharded), so a checkpoint written
by 8 FSDP ranks loads into 1 process and the other way round. The data position is the number of samples seen: batches
are a pure function of (seed, global sample index), so it is also world-size independent.
"""

from __future__ import annotations

import json
import shutil
from pathlib import Path
from typing import Any

import torch

from llmkit import artifacts
from llmkit.errors import UserError
from llmkit.outputs import RUN_CHECKPOINTS, default_permissions
from llmkit.runtime import is_dtensor

STATE_JSON, STATE_TENSORS = artifacts.STATE_FILE_NAMES  # the resume state: outside the fingerprint (artifacts.py)
CHECKPOINTS = RUN_CHECKPOINTS
STEP_DIR = "step_{:07d}"
TRAINABLE_ONLY = "trainable"  # training_state.json's "weights": the step kept only the parameters that train


def trainable_names(model: torch.nn.Module) -> set[str]:
    """The parameters that train: what a step checkpoint of TRAINABLE_ONLY holds."""
    return {name for name, param in model.named_parameters() if param.requires_grad}


def load_trainable_weights(model: torch.nn.Module, path: Path) -> None:
    """A step checkpoint's parameters that train, over a model built from the run's base (which
    holds the rest): every one of them, nothing else."""
    from llmkit.model.io import read_weights

    state = read_weights(path, device=str(next(model.parameters()).device))
    trains = trainable_names(model)
    if set(state) != trains:
        raise UserError(f"{path} does not hold this run's trainable parameters (missing {sorted(trains - set(state))[:3]}, "
                        f"unexpected {sorted(set(state) - trains)[:3]}); the checkpoint is damaged: start over with --force")
    parameters = dict(model.named_parameters())
    with torch.no_grad():
        for name, value in state.items():
            parameters[name].copy_(value)


def gather_full_state(model: torch.nn.Module, optimizer: torch.optim.Optimizer, distributed: bool):
    """Full model and optimizer state dicts on CPU (a collective call when distributed)."""
    if optimizer.state and not _sharded(model):
        return model.state_dict(), named_optimizer_state(model, optimizer)
    from torch.distributed.checkpoint.state_dict import StateDictOptions, get_model_state_dict, get_optimizer_state_dict

    options = StateDictOptions(full_state_dict=True, cpu_offload=distributed)
    model_state = get_model_state_dict(model, options=options)
    optim_state = get_optimizer_state_dict(model, optimizer, options=options)
    return model_state, optim_state


def _sharded(model: torch.nn.Module) -> bool:
    """FSDP2 holds each parameter as a DTensor shard."""
    return any(is_dtensor(p) for p in model.parameters())


def named_optimizer_state(model: torch.nn.Module, optimizer: torch.optim.Optimizer) -> dict:
    """The optimizer's state dict keyed by parameter name, as torch's `get_optimizer_state_dict`
    writes it for whole (unsharded) parameters. Not that function itself: it imports
    `torch._dynamo`, about 2 s of every process's start, to recognise compiled modules, and the
    models here are never wrapped in one."""
    name_of = {param: name for name, param in model.named_parameters()}  # a tied tensor once, under its first name
    names = [name_of[param] for group in optimizer.param_groups for param in group["params"]]
    numbered = optimizer.state_dict()
    return {"state": {names[index]: value for index, value in numbered["state"].items()},
            "param_groups": [dict(group, params=[names[index] for index in group["params"]]) for group in numbered["param_groups"]]}


def _numbered_optimizer_state(model: torch.nn.Module, optimizer: torch.optim.Optimizer, named: dict) -> dict | None:
    """`named_optimizer_state`'s inverse for this optimizer, whose groups must hold the saved groups'
    parameters in the saved order; None otherwise, for torch's `set_optimizer_state_dict`, which
    matches groups by name (and imports `torch._dynamo`, as its getter does)."""
    name_of = {param: name for name, param in model.named_parameters()}
    groups = [[name_of.get(param) for param in group["params"]] for group in optimizer.param_groups]
    if groups != [list(group["params"]) for group in named["param_groups"]]:
        return None
    index = {name: number for number, name in enumerate(name for group in groups for name in group)}
    if not set(named["state"]) <= set(index):
        return None
    return {"state": {index[name]: value for name, value in named["state"].items()},
            "param_groups": [dict(group, params=[index[name] for name in group["params"]]) for group in named["param_groups"]]}


class KeptWeights:
    """Weights a run keeps beside its own (the --ema average, the --keep-best weights): `values` of the
    parameters that train, by name, saved among a checkpoint's extra training-state tensors under
    SAVED_PREFIX."""

    SAVED_PREFIX = ""
    model: torch.nn.Module
    values: dict[str, torch.Tensor]

    def state_dict(self) -> dict[str, torch.Tensor]:
        """The model's state dict with the kept values in place of the parameters that train."""
        state = {k: v.detach().cpu() for k, v in self.model.state_dict().items()}
        for name, value in self.values.items():
            state[name] = value.detach().cpu().to(state[name].dtype)
        return state

    def saved_tensors(self) -> dict[str, torch.Tensor]:
        return {self.SAVED_PREFIX + name: value for name, value in self.values.items()}

    @classmethod
    def from_saved(cls, extra: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
        """This kind's values among a checkpoint's extra training-state tensors."""
        return {k[len(cls.SAVED_PREFIX):]: v for k, v in extra.items() if k.startswith(cls.SAVED_PREFIX)}


def write_training_state(directory: Path, optim_state: dict, progress: dict[str, Any], rng: dict[str, list[torch.Tensor]],
                         extra: dict[str, torch.Tensor] | None = None) -> None:
    from safetensors.torch import save_file

    tensors: dict[str, torch.Tensor] = {}
    scalars: dict[str, dict[str, Any]] = {}
    for fqn, state in optim_state["state"].items():
        for key, value in state.items():
            if isinstance(value, torch.Tensor):
                tensors[f"optim/{fqn}/{key}"] = value.detach().cpu().contiguous()
            else:  # e.g. a momentum buffer that is still None
                scalars.setdefault(fqn, {})[key] = value
    for kind, states in rng.items():
        for rank, state in enumerate(states):
            tensors[f"rng/{kind}/{rank}"] = state.cpu().contiguous()
    for name, value in (extra or {}).items():  # e.g. the EMA of the weights
        tensors[f"extra/{name}"] = value.detach().cpu().contiguous()
    save_file(tensors, str(directory / STATE_TENSORS), metadata={"format": "llmkit-training-state"})
    default_permissions(directory / STATE_TENSORS)
    groups = [
        {k: (list(v) if isinstance(v, tuple) else v) for k, v in group.items()} for group in optim_state["param_groups"]
    ]
    document = dict(progress, optimizer={"param_groups": groups, "scalar_state": scalars})
    (directory / STATE_JSON).write_text(json.dumps(document, indent=2, sort_keys=True) + "\n", encoding="utf-8")


def read_training_state(directory: Path) -> tuple[dict[str, Any], dict, dict[str, list[torch.Tensor]], dict[str, torch.Tensor]]:
    """(progress, optimizer state dict keyed by parameter name, rng states per kind and rank, extra tensors)."""
    from safetensors.torch import load_file

    json_path, tensor_path = directory / STATE_JSON, directory / STATE_TENSORS
    if not json_path.is_file() or not tensor_path.is_file():
        raise UserError(f"checkpoint {directory} has no training state ({STATE_JSON}); it cannot be resumed from")
    from llmkit.artifacts import checked_as_read

    try:
        with checked_as_read(json_path, tensor_path):
            document = json.loads(json_path.read_text(encoding="utf-8"))
            tensors = load_file(str(tensor_path))
    except UserError:  # (changed since it was saved: said so, by checked_as_read)
        raise
    except Exception as exc:  # JSON, UTF-8 or safetensors' own errors: all mean a damaged file
        raise UserError(f"cannot resume from {directory}: its training state is damaged ({type(exc).__name__}); "
                        f"restore it, or move {directory} away to resume from an older checkpoint") from exc
    optimizer = document.pop("optimizer")
    state: dict[str, dict[str, Any]] = {}
    rng: dict[str, list[torch.Tensor]] = {}
    extra: dict[str, torch.Tensor] = {}
    for name, value in tensors.items():
        if name.startswith("extra/"):
            extra[name[len("extra/"):]] = value
        if name.startswith("optim/"):
            fqn, key = name[len("optim/") :].rsplit("/", 1)
            state.setdefault(fqn, {})[key] = value
        elif name.startswith("rng/"):
            _, kind, rank = name.split("/")
            rng.setdefault(kind, []).append((int(rank), value))
    for fqn, scalars in optimizer["scalar_state"].items():
        state.setdefault(fqn, {}).update(scalars)
    groups = []
    for group in optimizer["param_groups"]:
        group = dict(group)
        if "betas" in group:
            group["betas"] = tuple(group["betas"])
        groups.append(group)
    rng_sorted = {kind: [t for _, t in sorted(items, key=lambda item: item[0])] for kind, items in rng.items()}
    return document, {"state": state, "param_groups": groups}, rng_sorted, extra


def load_optimizer_state(model: torch.nn.Module, optimizer: torch.optim.Optimizer, optim_state: dict, distributed: bool) -> None:
    numbered = None if _sharded(model) else _numbered_optimizer_state(model, optimizer, optim_state)
    if numbered is not None:
        optimizer.load_state_dict(numbered)
        return
    from torch.distributed.checkpoint.state_dict import StateDictOptions, set_optimizer_state_dict

    # Every rank holds the full state; when sharded (FSDP) each keeps its own slice.
    options = StateDictOptions(full_state_dict=distributed)
    set_optimizer_state_dict(model, optimizer, optim_state, options=options)


def rng_states(device: torch.device) -> dict[str, torch.Tensor]:
    states = {"cpu": torch.get_rng_state()}
    if device.type == "cuda":
        states["cuda"] = torch.cuda.get_rng_state(device)
    return states


def restore_rng(states: dict[str, list[torch.Tensor]], rank: int, world_size: int, device: torch.device) -> bool:
    """Restore this rank's RNG streams; False when the saved run had another world size."""
    saved_world = len(states.get("cpu", []))
    if saved_world != world_size:
        return False
    torch.set_rng_state(states["cpu"][rank])
    if device.type == "cuda" and "cuda" in states:
        torch.cuda.set_rng_state(states["cuda"][rank], device)
    return True


def step_dirs(run_dir: Path) -> list[Path]:
    """Complete checkpoints (with a manifest) under RUN/checkpoints, oldest first."""
    root = run_dir / CHECKPOINTS
    if not root.is_dir():
        return []
    found = [p for p in root.iterdir() if p.is_dir() and p.name.startswith("step_") and (p / artifacts.MANIFEST).is_file()]
    return sorted(found, key=lambda p: p.name)


def latest_checkpoint(run_dir: Path) -> Path | None:
    dirs = step_dirs(run_dir)
    return dirs[-1] if dirs else None


def saved_step(directory: Path) -> int:
    """The step a complete checkpoint holds; its training state must be readable, or resuming
    from it would quietly start again from step 0."""
    path = directory / STATE_JSON
    try:
        return int(json.loads(path.read_text(encoding="utf-8"))["step"])
    except (OSError, UnicodeDecodeError, ValueError, KeyError, TypeError) as exc:
        if directory.parent.name == CHECKPOINTS:
            older = f"move {directory} away to resume from an older checkpoint"
        else:  # the finished run itself
            older = f"delete {directory / 'manifest.json'} to resume from the newest step checkpoint"
        raise UserError(f"cannot resume: {path} is unreadable ({type(exc).__name__}); restore it, or {older}") from exc


def resume_point(run_dir: Path, *, finished_run_resumable: bool = True) -> Path | None:
    """The newest complete checkpoint to resume from: a step directory, or RUN itself when the
    run finished (so a finished run can be continued with a larger --max-steps). A final save cut
    short (by a full disk, say) has no manifest yet, so the newest step directory is used.
    `finished_run_resumable=False`: RUN's weights are not in the form the model trains in (merged
    LoRA adapters); its last step is a step directory too."""
    candidates = step_dirs(run_dir)[-1:]
    if finished_run_resumable and (run_dir / artifacts.MANIFEST).is_file():
        candidates.append(run_dir)
    return max(candidates, key=saved_step) if candidates else None


def prune(run_dir: Path, keep_last: int) -> None:
    """Keep the newest `keep_last` checkpoints; remove older ones and leftovers of killed writes."""
    root = run_dir / CHECKPOINTS
    if not root.is_dir():
        return
    for leftover in root.iterdir():
        # A hidden folder is a write that was killed; a step folder without its manifest, a prune
        # that was (checkpoints are renamed into place whole, with their manifest)
        if leftover.is_dir() and (leftover.name.startswith(".") or not (leftover / artifacts.MANIFEST).is_file()):
            shutil.rmtree(leftover, ignore_errors=True)
    if keep_last > 0:
        for old in step_dirs(run_dir)[:-keep_last]:
            # Manifest first: a kill in the middle leaves a plain folder, never a broken artifact.
            (old / artifacts.MANIFEST).unlink(missing_ok=True)
            shutil.rmtree(old, ignore_errors=True)
