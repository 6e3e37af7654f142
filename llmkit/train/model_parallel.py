"""The training loop's engine when the model itself is split: --tp and/or --pp, with data
parallelism (FSDP2 or replication) beside them on one device mesh.

The loop (llmkit.train.loop) hands over the full model, built and initialised alike on every
rank; this applies the layout (tensor parallel plan, pipeline stages, activation checkpointing,
compile, FSDP2 on the dp axis) and gives the loop what differs from plain data parallelism:
the forward/backward of a micro-batch slice, the gradient sync and clipping, validation, and
the full state dicts a checkpoint stores (the interface of DataParallelRun, llmkit/train/data_parallel.py,
the engine of every other run). Checkpoints keep the single-process layout: one full
`model.safetensors` in the usual row order, optimizer moments keyed by the usual names.
"""

from __future__ import annotations

import math
from contextlib import nullcontext
from pathlib import Path
from typing import Any, Callable, Sequence

import torch
import torch.nn as nn

from llmkit.errors import UsageError, UserError
from llmkit.model.gpt import GPT, IGNORE_INDEX, unmaterialised
from llmkit.train.layout import SPLIT_NEEDS_A_LANGUAGE_MODEL, Layout, check_model, rank_at
from llmkit.train.parallelize import (
    all_reduce_gradients,
    checkpoint_activations,
    clip_grad_norm,
    materialize,
    reorder_fused,
    shard_data_parallel,
    tensor_parallel,
)
from llmkit.train.objectives import targets_in
from llmkit.train.precision import autocast


def _rank_of(layout: Layout, pp_rank: int, dp_rank: int, tp_rank: int) -> int:
    return rank_at(pp_rank, dp_rank, tp_rank, layout.dp, layout.tp)


class ModelParallelRun:
    def __init__(self, model: nn.Module, layout: Layout, device: torch.device, *, seq_len: int, strategy: str,
                 activation_checkpointing: bool, compile: bool, loss_fn: Callable, precision: str,
                 weights: Path | None = None):
        import torch.distributed as dist

        check_model(model.config, layout, seq_len)
        if not isinstance(model, GPT) or any("lora" in name for name, _ in model.named_parameters()):
            raise UsageError(SPLIT_NEEDS_A_LANGUAGE_MODEL)
        import logging

        # Gathering FSDP x TP shards for a checkpoint takes two all-gathers; torch warns on every rank, every save.
        logging.getLogger("torch.distributed.tensor._redistribute").setLevel(logging.ERROR)
        self.layout, self.device, self.config, self.loss_fn, self.precision = layout, device, model.config, loss_fn, precision
        self.strategy, self.seq_len, self.compiled = strategy, seq_len, compile
        # for the run's header line, as DataParallelRun says why a CPU run sums gradients as usual
        self.batch_invariant = False
        self.not_invariant_because = ("the model is split across processes (--tp/--pp), whose gradients are summed "
                                      "by the split layers" if device.type == "cpu" else None)
        mesh = layout.mesh

        on_meta = unmaterialised(model)  # built on meta (pretrain from scratch, --init-from): each rank makes its part

        def parallelize(modules: list[nn.Module]) -> None:
            for module in modules:
                if layout.tp > 1:
                    tensor_parallel(module, mesh["tp"], sharded_loss=layout.pp == 1)
                if on_meta:
                    materialize(module, model, device, layout.tp, weights)
                if activation_checkpointing:
                    checkpoint_activations(module)
                if compile:
                    for block in module.blocks.children():
                        block.compile()
            if layout.dp > 1 and strategy == "fsdp":
                shard_data_parallel(modules, mesh["dp"], device, precision)

        self.pipeline = None
        if layout.pp > 1:
            from llmkit.train.pipeline import Pipeline

            self.pipeline = Pipeline(model, layout, device, seq_len, parallelize)  # which moves this rank's stages only
            self.modules = self.pipeline.modules
            self.container: nn.Module = nn.ModuleList(self.modules)
        else:
            # Split in host memory first: distribute_tensor moves one parameter at a time to the device
            # and keeps this rank's shard, so the whole model never has to fit there; the rest (norms
            # without sequence parallelism, buffers) follows.
            parallelize([model])
            model.to(device)
            self.modules = [model]
            self.container = model
        self.params = [p for p in self.container.parameters() if p.requires_grad]
        # What the loop trains (.train()) and what its optimizer holds: this rank's split of the model.
        self.model = self.optimizer_target = self.container
        self.tied = model.config.tie_embeddings and layout.pp > 1
        self.tied_group = self._tied_group() if self.tied else None
        self.pp_group = mesh["pp"].get_group() if layout.pp > 1 else None
        self.dp_group = mesh["dp"].get_group() if layout.dp > 1 else None
        self.gather_group = self._gather_group() if layout.pp > 1 else None
        self._dist = dist

    # -- groups --------------------------------------------------------------------------------
    def _tied_group(self):
        """Per (dp, tp) coordinate, the ranks of the first and the last pipeline stage."""
        import torch.distributed as dist

        layout, mine = self.layout, None
        for dp_rank in range(layout.dp):
            for tp_rank in range(layout.tp):
                ranks = [_rank_of(layout, 0, dp_rank, tp_rank), _rank_of(layout, layout.pp - 1, dp_rank, tp_rank)]
                group = dist.new_group(ranks)  # every rank takes part in creating every group
                if (dp_rank, tp_rank) == (layout.dp_rank, layout.tp_rank):
                    mine = group
        return mine

    def _gather_group(self):
        """The pipeline ranks of replica 0, tp rank 0: together they hold one copy of every weight."""
        import torch.distributed as dist

        return dist.new_group([_rank_of(self.layout, p, 0, 0) for p in range(self.layout.pp)])

    @property
    def on_last_stage(self) -> bool:
        return self.pipeline is None or self.pipeline.has_last

    @property
    def counts_loss(self) -> bool:
        """One rank per data-parallel replica reports its losses."""
        return self.on_last_stage and self.layout.tp_rank == 0

    # -- training ------------------------------------------------------------------------------
    def step_total(self, local: int) -> float:
        """Collective: the step's target tokens over the data-parallel replicas (the ranks of one
        replica read the same samples)."""
        if self.dp_group is None:  # a GPU tensor read back would wait for the last step's kernels
            return float(local)
        total = torch.tensor(float(local), dtype=torch.float64, device=self.device)  # NCCL reduces only CUDA tensors
        self._dist.all_reduce(total, group=self.dp_group)
        return float(total)

    def forward_backward(self, batch: Sequence[torch.Tensor], targets: int, step_total: float, last: bool,
                         position: int = 0, step: int = 0) -> torch.Tensor:
        """Forward and backward of this rank's slice of one micro-batch step, its mean over its
        `targets` weighed by their share of the step's `step_total`; the (mean) loss on a
        loss-reporting rank, zero elsewhere."""
        from torch.distributed.tensor.parallel import loss_parallel

        batch = self._full_length(batch)
        # the gradients are averaged over dp replicas (finish_gradients, or FSDP), hence the dp
        token_weight = self.layout.dp / step_total
        # (FSDP2 reduce-scatters every micro-batch's gradients: llmkit.train.distributed.gradient_sync)
        with autocast(self.device, self.precision):
            if self.pipeline is not None:
                return self.pipeline.forward_backward(batch[0], batch[1], token_weight, targets)
            with loss_parallel() if self.layout.tp > 1 else nullcontext():
                loss = self.loss_fn(self.modules[0], batch)
                (loss * (targets * token_weight)).backward()
        return loss.detach().float() if not hasattr(loss, "full_tensor") else loss.detach().full_tensor().float()

    def _full_length(self, batch: Sequence[torch.Tensor]) -> tuple[torch.Tensor, torch.Tensor]:
        """Right-pad (inputs, targets) to the run's sequence length: pipeline stages exchange fixed
        shapes and tensor parallelism shards the sequence evenly. The padding comes after every real
        token (causal attention never looks at it) and has no targets, so losses are unchanged."""
        inputs, targets = batch[0], batch[1]
        short = self.seq_len - inputs.shape[1]
        if short <= 0:
            return inputs, targets
        if self.config.objective != "clm":
            raise UserError("--tp/--pp with batches shorter than --seq-len needs a causal model; pass full-length batches")
        return (torch.nn.functional.pad(inputs, (0, short), value=0),
                torch.nn.functional.pad(targets, (0, short), value=IGNORE_INDEX))

    def finish_gradients(self) -> None:
        """After the last micro-batch: replicate across dp (unless FSDP did), sum the tied copies."""
        if self.dp_group is not None and self.strategy != "fsdp":
            all_reduce_gradients(self.params, self.dp_group, average=True)
        if self.tied_group is not None:
            tied = self._tied_param()
            if tied is not None and tied.grad is not None:
                all_reduce_gradients([tied], self.tied_group, average=False)

    def _tied_param(self) -> nn.Parameter | None:
        for module in self.modules:
            if module.tok_emb is not None:
                return module.tok_emb.weight
            if module.lm_head is not None:
                return module.lm_head.weight
        return None

    def clip(self, max_norm: float) -> float:
        skip = set()
        if self.tied and self.pipeline.has_last and not self.pipeline.has_first:
            skip = {id(self._tied_param())}  # the first stage counts the shared matrix
        return clip_grad_norm(self.params, max_norm, device=self.device, pp_group=self.pp_group, skip=skip)

    def mean_loss(self, local: torch.Tensor) -> torch.Tensor:
        """The step's loss averaged over data-parallel replicas, on every rank."""
        value = local.detach().float().reshape(()) if self.counts_loss else torch.zeros((), device=self.device)
        self._dist.all_reduce(value)
        return value / self.layout.dp

    # -- validation ----------------------------------------------------------------------------
    def evaluate(self, val_batches: Callable, val_size: int, micro_batch: int) -> float:
        """Mean loss over the validation samples: the same micro-batch chunks, weights and padding
        as the loop without model parallelism; padded rows have no targets."""
        if self.compiled and self.layout.tp > 1:
            # torch 2.13's compiled no-grad graph of a tensor-parallel block fails on its DTensor
            # input ("'Tensor' object has no attribute 'elem'"); validation runs the blocks eagerly.
            with torch.compiler.set_stance("force_eager"):
                return self._evaluate(val_batches, val_size, micro_batch)
        return self._evaluate(val_batches, val_size, micro_batch)

    @torch.no_grad()
    def _evaluate(self, val_batches: Callable, val_size: int, micro_batch: int) -> float:
        from torch.distributed.tensor.parallel import loss_parallel

        layout = self.layout
        chunks = [range(i, min(i + micro_batch, val_size)) for i in range(0, val_size, micro_batch)]
        per_call = layout.microbatches
        calls = math.ceil(len(chunks) / (per_call * layout.dp))
        for module in self.modules:
            module.eval()
        total = torch.zeros(2, device=self.device, dtype=torch.float64)  # the loss summed over targets; their count
        for k in range(calls):
            base = (k * layout.dp + layout.dp_rank) * per_call
            inputs, targets, weights = [], [], []
            for j in range(base, base + per_call):
                chunk = chunks[j] if j < len(chunks) else chunks[0]
                weight = len(chunk) if j < len(chunks) else 0
                indices = list(chunk) + [chunk[0]] * (micro_batch - len(chunk))
                x, y = val_batches(indices)[:2]
                y = y.clone()
                y[len(chunk):] = IGNORE_INDEX
                if weight == 0:
                    y[:] = IGNORE_INDEX
                inputs.append(x)
                targets.append(y)
                weights.append(targets_in(self.loss_fn, (x, y)) if weight else 0)  # a chunk's mean weighs by its targets
            padded = [self._full_length(pair) for pair in zip(inputs, targets)]
            x = torch.cat([a for a, _ in padded]).to(self.device)
            y = torch.cat([b for _, b in padded]).to(self.device)
            with autocast(self.device, self.precision):
                if self.pipeline is not None:
                    losses = self.pipeline.evaluate(x, y)
                else:
                    with loss_parallel() if layout.tp > 1 else nullcontext():
                        loss = self.loss_fn(self.modules[0], (x, y))
                    losses = [loss.full_tensor() if hasattr(loss, "full_tensor") else loss]
            if self.counts_loss:
                for loss, weight in zip(losses, weights):
                    if weight:
                        total[0] += loss.double() * weight
                        total[1] += weight
        self._dist.all_reduce(total)
        for module in self.modules:
            module.train()
        return float(total[0] / total[1]) if total[1] else math.nan

    # -- checkpoints ---------------------------------------------------------------------------
    def full_state(self, optimizer: torch.optim.Optimizer) -> tuple[dict | None, dict | None]:
        """Full model and optimizer state dicts in checkpoint order, on rank 0 (None elsewhere).
        A collective: every rank calls it."""
        from torch.distributed.checkpoint.state_dict import StateDictOptions, get_model_state_dict, get_optimizer_state_dict

        # cpu_offload keeps the full state on global rank 0 only; a pipeline needs it on each
        # stage's first rank, so it moves its own to the CPU.
        options = StateDictOptions(full_state_dict=True, cpu_offload=self.pipeline is None)
        model_state = get_model_state_dict(self.container, options=options)
        optim_state = get_optimizer_state_dict(self.container, optimizer, options=options)
        if self.pipeline is not None:
            model_state, optim_state = _to_cpu(model_state), _to_cpu(optim_state)
            model_state, optim_state = self._merge_stages(_strip_index(model_state), _strip_optim_index(optim_state))
            if model_state is None:
                return None, None
        elif self._dist.get_rank() != 0:
            return None, None
        tp = self.layout.tp
        model_state = reorder_fused(model_state, self.config, tp, to_rank_major=False)
        optim_state = dict(optim_state, state={name: {k: _reorder_one(name, v, self.config, tp, False) for k, v in values.items()}
                                               for name, values in optim_state["state"].items()})
        return model_state, optim_state

    def _merge_stages(self, model_state: dict, optim_state: dict):
        """Every stage's state gathered on rank 0 (over the pipeline ranks of replica 0), one tensor
        at a time: gathering each stage's whole state as one object held it three times over on
        rank 0 (pickled, gathered, unpickled), a save peak of twice one process's memory (measured:
        2.9 GB against 1.45 GB for a 50M model at --pp 2)."""
        layout = self.layout
        if layout.dp_rank != 0 or layout.tp_rank != 0:
            return None, None
        if layout.pp_rank != 0:
            self._send_state(model_state, optim_state)
            return None, None
        pieces = [(model_state, optim_state)] + [self._received_state(_rank_of(layout, p, 0, 0)) for p in range(1, layout.pp)]
        merged_model, merged_state, groups = {}, {}, None
        for stage_model, stage_optim in pieces:
            merged_model.update(stage_model)
            for name, values in stage_optim["state"].items():
                merged_state.setdefault(name, values)
            if groups is None:
                groups = [dict(g, params=list(g["params"])) for g in stage_optim["param_groups"]]
            else:
                for mine, theirs in zip(groups, stage_optim["param_groups"]):
                    mine["params"] += [p for p in theirs["params"] if p not in mine["params"]]
        if self.tied:  # the head's copy of the embedding: stored once, as the embedding
            merged_model.pop("lm_head.weight", None)
            merged_state.pop("lm_head.weight", None)
            for group in groups:
                group["params"] = [p for p in group["params"] if p != "lm_head.weight"]
        return merged_model, {"state": merged_state, "param_groups": groups}

    # Tensors between this run's own processes (object messages pickle; nothing is read from disk):
    # first the state's outline with each tensor's place, then the tensors, one message each.
    def _send_state(self, model_state: dict, optim_state: dict) -> None:
        tensors: list[torch.Tensor] = []
        outline = _outline((model_state, optim_state), tensors)
        first_stage = _rank_of(self.layout, 0, 0, 0)
        self._dist.send_object_list([outline, len(tensors)], dst=first_stage, group=self.gather_group)
        for tensor in tensors:
            self._dist.send_object_list([tensor], dst=first_stage, group=self.gather_group)

    def _received_state(self, source: int) -> tuple[dict, dict]:
        message: list[Any] = [None, None]
        self._dist.recv_object_list(message, src=source, group=self.gather_group)
        outline, count = message
        tensors = []
        for _ in range(count):
            one: list[Any] = [None]
            self._dist.recv_object_list(one, src=source, group=self.gather_group)
            tensors.append(one[0])
        return _filled(outline, tensors)

    def load_optimizer_state(self, optimizer: torch.optim.Optimizer, optim_state: dict) -> None:
        """A full optimizer state dict (checkpoint order and names) into this rank's shards."""
        from torch.distributed.checkpoint.state_dict import StateDictOptions, set_optimizer_state_dict

        tp = self.layout.tp
        state = {name: {k: _reorder_one(name, v, self.config, tp, True) for k, v in values.items()}
                 for name, values in optim_state["state"].items()}
        groups = optim_state["param_groups"]
        if self.pipeline is not None:
            if self.tied and "tok_emb.weight" in state:
                state["lm_head.weight"] = state["tok_emb.weight"]
            local = {}
            for index, module in enumerate(self.modules):
                for name, _ in module.named_parameters():
                    if name in state:
                        local[f"{index}.{name}"] = state[name]
            names = {name.split(".", 1)[1]: name for name in local}
            local_groups = []
            for group in groups:
                params = [names[p] for p in group["params"] if p in names]
                if self.tied and "tok_emb.weight" in group["params"] and "lm_head.weight" in names:
                    params.append(names["lm_head.weight"])
                local_groups.append(dict(group, params=params))
            state, groups = local, local_groups
        set_optimizer_state_dict(self.container, optimizer, {"state": state, "param_groups": groups},
                                 options=StateDictOptions(full_state_dict=True))


def _reorder_one(name: str, value: Any, config, tp: int, to_rank_major: bool) -> Any:
    if not isinstance(value, torch.Tensor) or value.dim() == 0:
        return value
    return reorder_fused({name: value}, config, tp, to_rank_major=to_rank_major)[name]


class _TensorAt(int):
    """A tensor's place in the list sent after an outline."""


def _outline(value: Any, tensors: list[torch.Tensor]) -> Any:
    """`value` with each tensor replaced by its place in `tensors` (appended to)."""
    if isinstance(value, torch.Tensor):
        tensors.append(value)
        return _TensorAt(len(tensors) - 1)
    if isinstance(value, dict):
        return {k: _outline(v, tensors) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return type(value)(_outline(v, tensors) for v in value)
    return value


def _filled(value: Any, tensors: list[torch.Tensor]) -> Any:
    if isinstance(value, _TensorAt):
        return tensors[value]
    if isinstance(value, dict):
        return {k: _filled(v, tensors) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return type(value)(_filled(v, tensors) for v in value)
    return value


def _to_cpu(value: Any) -> Any:
    if isinstance(value, torch.Tensor):
        return value.detach().cpu()
    if isinstance(value, dict):
        return {k: _to_cpu(v) for k, v in value.items()}
    if isinstance(value, list):
        return [_to_cpu(v) for v in value]
    return value


def _strip_index(state: dict) -> dict:
    """'0.blocks.3.attn...' (a stage inside the container) -> 'blocks.3.attn...'."""
    return {name.split(".", 1)[1]: value for name, value in state.items()}


def _strip_optim_index(optim_state: dict) -> dict:
    return {
        "state": _strip_index(optim_state["state"]),
        "param_groups": [dict(g, params=[p.split(".", 1)[1] for p in g["params"]]) for g in optim_state["param_groups"]],
    }
