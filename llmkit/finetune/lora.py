"""LoRA in plain torch: low-rank adapters on chosen linear layers, base weights frozen.

    y = x W^T + b + (alpha / r) * (x A^T) B^T        A [r, in] (Kaiming), B [out, r] (zeros)

`LoRALinear` is an `nn.Linear` that keeps the wrapped layer's `weight` and `bias` under their
own names and adds `lora_A` / `lora_B`, so a training checkpoint holds the base model's keys
plus `<layer>.lora_A` / `<layer>.lora_B` and nothing else. Because B starts at zero, step 0 is
exactly the base model. `llmkit.model.adapters.merge_state_dict` folds every adapter into its
weight, W + (alpha / r) B A, computed in float32; the final checkpoint holds plain merged weights
(and generate, eval and export merge a step checkpoint's the same way).
"""

from __future__ import annotations

import fnmatch
import math

import torch
import torch.nn as nn

from llmkit.errors import UsageError
from llmkit.model.adapters import merged_weight
from llmkit.model.cpu_gemm import Linear, linear

# Never adapted: the output head (tied to the embedding in most models) and a classifier head,
# which trains in full when present.
EXCLUDED = ("lm_head", "classifier")


class LoRALinear(nn.Linear):
    def __init__(self, base: nn.Linear, rank: int, alpha: float, dropout: float = 0.0):
        nn.Module.__init__(self)
        self.in_features, self.out_features = base.in_features, base.out_features
        self.weight = base.weight
        self.bias = base.bias
        self.weight.requires_grad_(False)
        if self.bias is not None:
            self.bias.requires_grad_(False)
        factory = {"device": base.weight.device, "dtype": base.weight.dtype}
        self.lora_A = nn.Parameter(torch.empty(rank, self.in_features, **factory))
        self.lora_B = nn.Parameter(torch.zeros(self.out_features, rank, **factory))
        nn.init.kaiming_uniform_(self.lora_A, a=math.sqrt(5))  # as nn.Linear initialises a weight
        self.rank, self.alpha, self.scaling = rank, alpha, alpha / rank
        self.lora_dropout = nn.Dropout(dropout)
        self.train(base.training)  # an adapter on a model in eval mode drops nothing

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        update = linear(linear(self.lora_dropout(x), self.lora_A), self.lora_B)
        return linear(x, self.weight, self.bias) + self.scaling * update

    def extra_repr(self) -> str:
        return f"{super().extra_repr()}, rank={self.rank}, alpha={self.alpha}"


def _matches(name: str, targets: list[str]) -> bool:
    leaf = name.rsplit(".", 1)[-1]
    return any(t == "all" or t == leaf or fnmatch.fnmatchcase(name, t) for t in targets)


def apply_lora(model: nn.Module, targets: list[str], rank: int, alpha: float, dropout: float = 0.0) -> list[str]:
    """Freeze every parameter, then put adapters on the matching linear layers.

    A target is a layer's own name (`q_proj`), a glob over full names (`blocks.0.*`), or `all`.
    Returns the adapted layer names.
    """
    if rank <= 0:
        raise UsageError(f"--lora-rank must be positive, got {rank}")
    for param in model.parameters():
        param.requires_grad_(False)
    candidates = [
        name for name, module in model.named_modules()
        if isinstance(module, nn.Linear) and not isinstance(module, LoRALinear) and name.rsplit(".", 1)[-1] not in EXCLUDED
    ]
    # each target on its own: a typo (or another library's name, v_proj) beside a good one would
    # otherwise train fewer adapters than asked, unsaid
    if not candidates:  # (an LSTM: its gates are no nn.Linear an adapter could wrap)
        raise UsageError("LoRA adapts a Transformer's linear layers and this model has none (an LSTM); leave out --lora-rank "
                         "to fine-tune it in full")
    layers = ", ".join(sorted({n.rsplit(".", 1)[-1] for n in candidates}))
    if unmatched := [t for t in targets if not any(_matches(name, [t]) for name in candidates)]:
        raise UsageError(f"--lora-targets {','.join(unmatched)} matches no linear layer of this model; "
                        f"its linear layers are named {layers}")
    chosen = [name for name in candidates if _matches(name, targets)]
    if not chosen:  # (no target given at all: --lora-targets ",")
        raise UsageError(f"--lora-targets names no layer; name some of {layers}")
    smallest = min(min(model.get_submodule(name).in_features, model.get_submodule(name).out_features) for name in chosen)
    if rank > smallest:  # past the layer's own rank an adapter is a larger copy of the layer, not a low-rank update
        raise UsageError(f"--lora-rank {rank} exceeds the smallest dimension ({smallest}) of the adapted layers; "
                        f"use a rank of at most {smallest} (typically 4 to 64)")
    for name in chosen:
        parent_name, _, leaf = name.rpartition(".")
        parent = model.get_submodule(parent_name) if parent_name else model
        setattr(parent, leaf, LoRALinear(getattr(parent, leaf), rank, alpha, dropout))
    return chosen


def merge_lora(model: nn.Module) -> nn.Module:
    """Replace every LoRALinear in a live model by a plain Linear (the model's own, llmkit/model/cpu_gemm.py)
    with the merged weight."""
    for name, module in list(model.named_modules()):
        if isinstance(module, LoRALinear):
            parent_name, _, leaf = name.rpartition(".")
            parent = model.get_submodule(parent_name) if parent_name else model
            plain = Linear(module.in_features, module.out_features, bias=module.bias is not None,
                              device=module.weight.device, dtype=module.weight.dtype)
            with torch.no_grad():
                plain.weight.copy_(merged_weight(module.weight, module.lora_A, module.lora_B, module.scaling))
                if module.bias is not None:
                    plain.bias.copy_(module.bias)
            plain.train(module.training)
            plain.requires_grad_(False)  # as the layer it replaces: its base was frozen
            setattr(parent, leaf, plain)
    return model


# -- freezing named parameter groups -------------------------------------------------------------

GROUPS = {
    "embeddings": ("tok_emb.*", "pos_emb.*"),
    "attention": ("*.attn.*",),
    "mlp": ("*.mlp.*",),
    "norms": ("*norm*",),
    "lm_head": ("lm_head.*",),
}


def _example_glob(names: list[str]) -> str:
    """A glob over some of these parameter names: the first layer's (`blocks.0.*`), else a module's
    that no group names (an LSTM's `lstm.*`)."""
    for name in names:
        parts = name.split(".")
        numbered = next((i for i, part in enumerate(parts) if part.isdigit()), None)
        if numbered is not None:
            return ".".join(parts[: numbered + 1]) + ".*"
    grouped = {name for name in names for globs in GROUPS.values() if any(fnmatch.fnmatchcase(name, g) for g in globs)}
    return f"{next((n for n in names if n not in grouped), names[-1]).split('.')[0]}.*"


def freeze(model: nn.Module, patterns: list[str]) -> list[str]:
    """Stop training parameters by group name (embeddings, attention, mlp, norms, lm_head) or
    by a glob over parameter names (`blocks.0.*`). Returns the frozen names."""
    frozen = []
    names = [name for name, _ in model.named_parameters(remove_duplicate=False)]
    for pattern in patterns:
        globs = GROUPS.get(pattern, (pattern, f"{pattern}.*"))
        hits = [n for n in names if any(fnmatch.fnmatchcase(n, g) for g in globs)]
        if not hits:  # (this model's groups and names: an LSTM has no attention, mlp, norms or blocks.0.*)
            groups = [group for group, globs in GROUPS.items() if any(fnmatch.fnmatchcase(n, g) for n in names for g in globs)]
            raise UsageError(f"--freeze {pattern} matches no parameter of this model; use a group ({', '.join(groups)}) or a "
                             f"name glob such as {_example_glob(names)}")
        frozen.extend(hits)
    params = dict(model.named_parameters(remove_duplicate=False))
    for name in frozen:
        params[name].requires_grad_(False)
    return sorted(set(frozen))


def tied_to(model: nn.Module, names: list[str]) -> list[str]:
    """The other names of these parameters (a tied head is the token embedding's tensor)."""
    chosen = {id(param) for name, param in model.named_parameters(remove_duplicate=False) if name in names}
    return sorted(name for name, param in model.named_parameters(remove_duplicate=False)
                  if id(param) in chosen and name not in names)


def count_parameters(model: nn.Module) -> tuple[int, int]:
    """(trainable, total), each tied tensor once."""
    params = list(model.parameters())
    return sum(p.numel() for p in params if p.requires_grad), sum(p.numel() for p in params)
