"""Planning a sweep: which runs, with which model, tokens, learning rate and batch.

The rules (docs/scaling.md):
  sizes        --sizes LxW..., else a ladder: depth d = 1..K, width = width_per_layer x d,
               heads = width / head_dim (depth and width grow together)
  tokens       every size x every --tokens budget; or, per --flops budget C, the --per-budget
               sizes whose N is nearest sqrt(C / (6 r)) (r = --tokens-per-param), each trained
               on D = C / (6 N) tokens. N counts non-embedding parameters, as does C = 6 N D.
  lr           --lr x reference width / width (--lr-rule width), or --lr for all
  batch        --batch-tokens, made smaller (down to one sequence, else whole micro-batches)
               so that a run takes at least --min-steps optimizer steps
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any

from llmkit.errors import UsageError, UserError
from llmkit.train.launch import largest_divisor
from llmkit.sweep.config import SweepConfig, parse_size
from llmkit.pretrain.config import PretrainConfig


def too_few_for_a_fit(runs: list) -> str | None:
    """What a grid lacks for `scaling fit` to determine its law (6 points or more, 3 model sizes and
    3 token counts or more), said before training rather than after; None when it has them."""
    sizes, tokens = len({run.non_embedding_params for run in runs}), len({run.tokens for run in runs})
    if len(runs) >= 6 and sizes >= 3 and tokens >= 3:
        return None
    return (f"{len(runs)} run(s) of {sizes} size(s) and {tokens} token count(s): scaling fit needs 6 points or more, and 3 "
            "sizes and 3 token counts or more, to determine its law; widen the grid for a fit")


@dataclass
class PlannedRun:
    name: str
    layers: int
    width: int
    heads: int
    params: int
    non_embedding_params: int
    tokens: int
    flops_budget: float | None
    config: PretrainConfig  # the run's pretrain options, all of them

    @property
    def flops(self) -> float:
        return 6.0 * self.non_embedding_params * self.tokens

    def row(self) -> dict[str, Any]:
        return {
            "name": self.name, "n_layer": self.layers, "n_embd": self.width, "n_head": self.heads, "params": self.params,
            "non_embedding_params": self.non_embedding_params, "tokens": self.tokens, "flops": self.flops,
            "flops_budget": self.flops_budget, "lr": self.config.optim.lr, "batch_tokens": self.config.batch_tokens,
        }


def model_sizes(config: SweepConfig) -> list[tuple[int, int]]:
    if config.sizes:
        return sorted({parse_size(size) for size in config.sizes}, key=lambda s: (s[0] * s[1] ** 2, s))
    return [(depth, config.width_per_layer * depth) for depth in range(1, config.ladder + 1)]


def _count(config: SweepConfig, layers: int, width: int, heads: int, vocab_size: int) -> tuple[int, int, int]:
    """(total, non-embedding) parameters of a size, and its context length: built on the meta device, no memory."""
    import torch

    from llmkit.model.presets import build_model, non_embedding_params, resolve_model_config

    overrides = dict(config.base.architecture.overrides(), n_layer=layers, n_embd=width, **_head_overrides(heads))
    model_config = resolve_model_config(config.base.architecture.model, vocab_size=vocab_size, overrides=overrides)
    with torch.device("meta"):
        model = build_model(model_config)
    return model.num_params(), non_embedding_params(model), model_config.context_length


# A batch past this many sequences is rounded down to a multiple of it. It is --micro-batch's default:
# sweeps before 2026-12-03 rounded to whole micro-batches, which this keeps for the default.
WHOLE_SEQUENCES = 16


def _head_overrides(heads: int | None) -> dict[str, int]:
    return {} if heads is None else {"n_head": heads, "n_kv_head": heads}


MAX_RUN_TOKENS = 10**15  # (--tokens' range)


def plan(config: SweepConfig, vocab_size: int) -> list[PlannedRun]:
    """Every run of the sweep, in a fixed order (by budget, then size)."""
    sizes = []
    from llmkit.model.presets import resolve_model_config

    choice = config.base.architecture  # an LSTM has no attention heads: --head-dim does not apply
    lstm = resolve_model_config(choice.model, vocab_size=vocab_size, overrides=choice.overrides()).arch == "lstm"
    for layers, width in model_sizes(config):
        heads = None if lstm else max(1, width // config.head_dim)
        if heads is not None and width % heads:  # (first: the note below then told of heads the error refused)
            raise UsageError(f"width {width} does not split into {heads} heads of --head-dim {config.head_dim}; choose widths "
                            f"that are multiples of {config.head_dim}")
        if heads is not None and width % config.head_dim:
            from llmkit.console import note

            note(f"size {layers}x{width}: {heads} head(s) of {width // heads}, as {width} is not a multiple of "
                 f"--head-dim {config.head_dim}")
        try:
            total, non_embedding, context = _count(config, layers, width, heads, vocab_size)
        except UserError as exc:  # the size, not a model flag, is what to change
            shape = f" ({heads} head(s) of {width // heads})" if heads else ""
            raise UsageError(f"size {layers}x{width}{shape}: "
                            f"{str(exc).split('; change the model flags')[0]}; choose other --sizes or --head-dim") from exc
        sizes.append((layers, width, heads, total, non_embedding, context))
    grid: list[tuple[tuple, int, float | None]] = []
    if config.flops and len(sizes) < 3:
        source = "--sizes gives" if config.sizes else "the ladder has"
        raise UserError(f"a FLOP budget's minimum is fitted over at least 3 sizes, and {source} {len(sizes)}; give more "
                        "sizes (or use --tokens budgets)")
    if config.flops and len(sizes) < config.per_budget:
        from llmkit.console import note

        note(f"--per-budget {config.per_budget}, but there are {len(sizes)} sizes: each budget trains all of them")
    if config.token_budgets:  # (a budget given twice would be one run, counted twice by the fit)
        grid = [(size, tokens, None) for tokens in sorted({int(t) for t in config.token_budgets}) for size in sizes]
    else:
        for budget in sorted(set(config.flops)):
            centre = math.sqrt(budget / (6.0 * config.tokens_per_param))
            nearest = sorted(sizes, key=lambda s: (abs(math.log(s[4] / centre)), s[4]))[: config.per_budget]
            grid += [(size, int(budget / (6.0 * size[4])), budget) for size in sorted(nearest, key=lambda s: s[4])]
    runs = []
    for (layers, width, heads, total, non_embedding, context), tokens, budget in grid:
        if config.base.seq_len and config.base.seq_len > context:  # every run would start, then fail
            raise UserError(f"--seq-len {config.base.seq_len} is longer than the {layers}x{width} model's context length "
                            f"{context}; lower --seq-len or raise --context-length")
        seq_len = config.base.seq_len or context
        if tokens > MAX_RUN_TOKENS:  # (--tokens' own bound: a FLOP budget's typo, 1e30, planned runs that never end)
            raise UserError(f"the FLOP budget {budget:g} leaves the {layers}x{width} model {tokens:.3g} tokens, more than "
                            f"{MAX_RUN_TOKENS:.0e} a run may take; lower --flops, or give larger --sizes")
        if tokens < seq_len * config.min_steps:  # even a batch of one sequence would take fewer steps (and overshoot the budget)
            named = f"the FLOP budget {budget:g}" if config.flops else f"the token budget {tokens}"
            raise UserError(f"{named} leaves the {layers}x{width} model {tokens} tokens, fewer than --min-steps "
                            f"{config.min_steps} steps of one sequence of {seq_len}; raise the budget, or lower --seq-len or "
                            "--min-steps")
        sequences = max(1, min(config.base.batch_tokens, tokens // config.min_steps) // seq_len)
        if sequences > WHOLE_SEQUENCES:  # a batch with many divisors (a prime one would run one sequence at a time)
            sequences = sequences // WHOLE_SEQUENCES * WHOLE_SEQUENCES
        # --micro-batch is how a run computes, not what: the batch stays, and the run takes the
        # largest micro-batch up to it that divides the batch (accumulation makes up the rest)
        micro = largest_divisor(sequences, config.base.devices.micro_batch)
        batch = sequences * seq_len
        lr = config.base.optim.lr * (config.lr_reference_width / width if config.lr_rule == "width" else 1.0)
        values = dict(config.base.flat(), n_layer=layers, n_embd=width, **_head_overrides(heads), max_tokens=tokens,
                      max_steps=None, batch_tokens=batch, lr=lr, micro_batch=micro)
        name = (f"c{budget_label(budget)}-" if budget is not None else "") + f"d{layers}-w{width}-t{tokens}"
        runs.append(PlannedRun(name, layers, width, heads, total, non_embedding, tokens, budget, PretrainConfig.build(**values)))
    assert len({run.name for run in runs}) == len(runs), "two planned runs share a name"
    return runs


def legacy_name(run: PlannedRun) -> str:
    """The run's name before budgets were named in as many digits as tell them apart (one digit:
    2.5e8 was "c2e08"): a sweep started then is continued under today's names."""
    if run.flops_budget is None:
        return run.name
    return f"c{run.flops_budget:.0e}".replace("+", "") + run.name[run.name.index("-"):]


def budget_label(flops: float) -> str:
    """A FLOP budget in the fewest significant digits that still name it alone ("1e12", "1.5e8"): two
    budgets never share a run name, plot or label."""
    for digits in range(17):
        text = f"{flops:.{digits}e}"
        if float(text) == flops:
            break
    mantissa, exponent = text.split("e")
    return f"{mantissa}e{int(exponent):02d}"
