"""LoRA adapters folded into plain weights: W + (alpha / r) B A, computed in float32. A LoRA run
merges its finished weights (and RUN/best) with `merge_state_dict`; its step checkpoints keep only
what trains (the adapters, a classifier's head), and `step_checkpoint_weights` makes the same
merge from them and the run's base, so generate, chat, eval and export load a step as they load
the finished run (bit-equal to the run's own merge at that step)."""

from __future__ import annotations

from pathlib import Path

import torch

from llmkit.errors import UserError

LORA_SUFFIXES = (".lora_A", ".lora_B")  # an adapter's tensors beside its layer's `weight` (llmkit.finetune.lora)


def is_adapter_key(key: str) -> bool:
    return key.endswith(LORA_SUFFIXES)


def refuse_unrecorded_adapters(art, names) -> None:
    """Adapters in a checkpoint whose task.json records no LoRA step: a damaged file, not a model."""
    if any(map(is_adapter_key, names)):
        raise UserError(f"{art.path} holds unmerged LoRA adapters, and its task.json says no LoRA run's step wrote it; "
                        "the checkpoint is damaged: rebuild it")


def merged_float(weight: torch.Tensor, lora_A: torch.Tensor, lora_B: torch.Tensor, scaling: float) -> torch.Tensor:
    """One layer's weight with its adapter folded in, W + scaling B A, in float32 (the one arithmetic of
    every merge: a run's, a step's load, --ema's average)."""
    return weight.float() + scaling * (lora_B.float() @ lora_A.float())


def merged_weight(weight: torch.Tensor, lora_A: torch.Tensor, lora_B: torch.Tensor, scaling: float) -> torch.Tensor:
    """`merged_float`, stored in the weight's dtype."""
    return merged_float(weight, lora_A, lora_B, scaling).to(weight.dtype).contiguous()


def step_bases(art) -> list[Path]:
    """The folders a LoRA step checkpoint's model is read from beside its own: its base, and that
    base's where it is a step too (a stage reading the step must not write over them)."""
    from llmkit.model.averaging import is_lora_step

    from llmkit import artifacts

    bases = []
    while is_lora_step(art) and (recorded := art.recorded_input("base")) is not None and recorded.path.is_dir():
        bases.append(recorded.path)
        try:
            art = artifacts.load(recorded.path, kind="checkpoint")
        except UserError:  # (a damaged base is still one to guard: the stage says what is wrong with it as it reads it)
            break
    return bases


def merge_state_dict(state: dict[str, torch.Tensor], scaling: float) -> dict[str, torch.Tensor]:
    """A plain state dict: each `X.weight` gets + scaling * X.lora_B @ X.lora_A; adapters removed."""
    merged = {k: v for k, v in state.items() if not is_adapter_key(k)}
    for key in state:
        if key.endswith(".lora_A"):
            prefix = key[: -len(".lora_A")]
            merged[f"{prefix}.weight"] = merged_weight(state[f"{prefix}.weight"], state[key], state[f"{prefix}.lora_B"], scaling)
    return merged


def step_base(art, config):
    """The base a LoRA step checkpoint's adapters adapt (its recorded input "base"), checked unchanged
    by fingerprint and to fit `config` (the step's model config), before a model of its size is built.
    A base that is itself a LoRA step (a fine-tune of one) is checked so down to its own base."""
    from llmkit import artifacts
    from llmkit.model.io import WEIGHTS, refuse_a_config_its_weights_do_not_fit

    recorded = art.recorded_input("base")
    if recorded is None:
        raise UserError(f"{art.path} holds LoRA adapters without the base model they adapt (no input 'base'); the "
                        "checkpoint is damaged: use the finished run directory")
    ref = next(ref for ref in art.manifest.inputs if ref["role"] == "base")
    where = ref["path"] if Path(ref["path"]) == recorded.path else f"{ref['path']}, from here {recorded.path}"
    if not recorded.path.is_dir():
        raise UserError(f"{art.path} is a LoRA step checkpoint (its adapters only), whose model is its base ({where}) with "
                        "them folded in, and that base is not there; put it back where the run read it (a finished run's "
                        "own directory holds merged weights, which need no base)")
    base = artifacts.load(recorded.path, kind="checkpoint")
    if base.fingerprint != recorded.fingerprint:
        raise UserError(f"{art.path} is a LoRA step checkpoint (its adapters only), and its base {recorded.path} changed "
                        f"since the run read it (fingerprint {base.fingerprint[:12]}, not {recorded.fingerprint[:12]}); "
                        "restore it (a finished run's own directory holds merged weights, which need no base)")
    from llmkit.model.averaging import StoredWeights, is_lora_step

    if is_lora_step(base):
        step_base(base, config)
        return base
    refuse_a_config_its_weights_do_not_fit(config, base.file(WEIGHTS))

    with StoredWeights(base.file(WEIGHTS)) as stored:
        if any(is_adapter_key(name) for name in stored if of_the_base(name)):
            raise UserError(f"{base.path}, the base of {art.path}, holds unmerged adapters itself; use the finished run "
                            "directories, whose weights are merged")
    return base


def base_tensor(value: torch.Tensor) -> torch.Tensor:
    """A base weight as a step's model holds it: in float32, as the run's model held them (a bf16
    import's weights upcast as it loaded them: merged in a bf16 weight, a tenth of the update was
    rounded away, a 2026-12-07 review)."""
    return value.float() if value.is_floating_point() else value


def of_the_base(name: str) -> bool:
    """A base tensor a step's model takes: not the base's own classifier head, which the run left out."""
    from llmkit.model.classifier import HEAD_PREFIX

    return not name.startswith(HEAD_PREFIX)


def step_checkpoint_weights(art, device: str) -> dict[str, torch.Tensor]:
    """A LoRA step checkpoint's model as plain weights, on `device`: its base's, what the step
    trained laid over them, and the adapters merged, as averaging reads them a tensor at a time
    (`averaging.MergedStepWeights`: one merge for both, on the CPU, as the run merged its own)."""
    from llmkit.artifacts import checked_as_read
    from llmkit.model.averaging import MergedStepWeights

    # (each weights file hashed beside the read, the base's too: a same-size edit of the base was fine-tuned on, unsaid)
    with MergedStepWeights(art) as merged, checked_as_read(*merged.files_read):
        return {name: tensor.to(device) for name, tensor in merged.items()}
