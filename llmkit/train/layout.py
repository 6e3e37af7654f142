"""How a run's processes split the work: data x tensor x pipeline parallel, on one device mesh.

    world size = pp x dp x tp;  rank = (pp_rank * dp + dp_rank) * tp + tp_rank

Tensor parallelism is the innermost dimension, so its (chattiest) groups are neighbouring
ranks, which torchrun places on one node. Data indexing uses the dp coordinate only: the tp
and pp ranks of one data-parallel replica read the same batch.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from llmkit.errors import UsageError

SCHEDULES = ("gpipe", "1f1b", "interleaved-1f1b")
STAGES_PER_RANK = {"gpipe": 1, "1f1b": 1, "interleaved-1f1b": 2}


def stage_layers(n_layer: int, stages: int) -> list[range]:
    """Consecutive layer ranges, as even as possible (earlier stages take the remainder); rank r of
    a pipeline holds stages r, r + pp, ... (llmkit/train/pipeline.py). Torch-free: the plan uses it."""
    base, extra = divmod(n_layer, stages)
    ranges, start = [], 0
    for s in range(stages):
        size = base + (1 if s < extra else 0)
        ranges.append(range(start, start + size))
        start += size
    return ranges


@dataclass
class Layout:
    dp: int = 1
    tp: int = 1
    pp: int = 1
    dp_rank: int = 0
    tp_rank: int = 0
    pp_rank: int = 0
    schedule: str = "1f1b"
    microbatches: int = 1  # pipeline micro-batches per pipeline step (1 without a pipeline)
    mesh: Any = None  # torch DeviceMesh ("pp", "dp", "tp") when tp or pp > 1

    @property
    def model_parallel(self) -> bool:
        return self.tp > 1 or self.pp > 1

    @property
    def batch_ways(self) -> int:
        """Micro-batches one optimizer-step slice feeds at once: dp replicas x pipeline micro-batches."""
        return self.dp * self.microbatches

    def describe(self) -> str:
        parts = [f"dp {self.dp}"] + ([f"tp {self.tp}"] if self.tp > 1 else []) + ([f"pp {self.pp} ({self.schedule})"] if self.pp > 1 else [])
        return " x ".join(parts)


def world_problem(world: int, tp: int, pp: int) -> str | None:
    """Why `world` processes cannot hold tp x pp (None: they can), with the fix."""
    ways = tp * pp
    if ways == 1 or (world >= ways and world % ways == 0):
        return None
    asked = " x ".join(f"--{name} {n}" for name, n in (("tp", tp), ("pp", pp)) if n > 1)
    return (f"{asked} needs a multiple of {ways} processes, this run has {world}; pass --gpus {ways} "
            f"(or --nproc {ways} on CPU), or a multiple of it for data parallelism beside the split")


def check_world(world: int, tp: int, pp: int) -> None:
    """Before any process starts: the world must be a multiple of tp x pp."""
    problem = world_problem(world, tp, pp)
    if problem:
        raise UsageError(problem)


SPLIT_NEEDS_A_LANGUAGE_MODEL = ("--tp/--pp split a language model's own layers; this run trains a classifier head or LoRA "
                                "adapters: leave --tp/--pp out and use data parallelism (--nproc/--gpus)")
# The weights' copies a run keeps (--ema, --keep-best) are whole: refused where the weights are split
# (training refuses them; `llmkit plan` too, as it plans only what runs).
EMA_UNDER_SPLIT_MODEL = ("--ema keeps full weights on every process, which --tp/--pp exist to avoid; leave --ema out "
                         "(or average checkpoints afterwards with --average-last)")
EMA_UNDER_FSDP = "--ema keeps full weights on every process, which --strategy fsdp exists to avoid; use ddp"
BEST_UNDER_SPLIT_MODEL = ("--keep-best keeps full weights on every process, which --tp/--pp and --strategy fsdp exist to avoid; "
                          "leave --keep-best out (each step checkpoint records its validation loss: keep them with --keep-last 0)")


def weight_copies_problem(ema: bool, keep_best: bool, *, tp: int, pp: int, fsdp_over: int) -> str | None:
    """Why a run cannot keep these copies of its weights in this layout (`fsdp_over`: the processes
    --strategy fsdp shards over, 1 without it), or None."""
    if ema and (tp > 1 or pp > 1):
        return EMA_UNDER_SPLIT_MODEL
    if ema and fsdp_over > 1:
        return EMA_UNDER_FSDP
    if keep_best and (tp > 1 or pp > 1 or fsdp_over > 1):
        return BEST_UNDER_SPLIT_MODEL
    return None


def coordinates(rank: int, dp: int, tp: int) -> tuple[int, int, int]:
    """(pp_rank, dp_rank, tp_rank) of a global rank: init_device_mesh's row-major (pp, dp, tp) order."""
    return rank // (tp * dp), rank // tp % dp, rank % tp


def rank_at(pp_rank: int, dp_rank: int, tp_rank: int, dp: int, tp: int) -> int:
    return (pp_rank * dp + dp_rank) * tp + tp_rank


def build_layout(world: int, rank: int, device_type: str, *, tp: int, pp: int, schedule: str, microbatches: int | None) -> Layout:
    """This rank's coordinates, and the mesh when the model itself is split (a collective call)."""
    check_world(world, tp, pp)
    if schedule not in SCHEDULES:
        raise UsageError(f"unknown --pp-schedule {schedule!r}; choose one of: {', '.join(SCHEDULES)}")
    dp = world // (tp * pp)
    pp_rank, dp_rank, tp_rank = coordinates(rank, dp, tp)
    layout = Layout(dp=dp, tp=tp, pp=pp, dp_rank=dp_rank, tp_rank=tp_rank, pp_rank=pp_rank, schedule=schedule, microbatches=(microbatches or pp) if pp > 1 else 1)
    if layout.model_parallel:
        from torch.distributed.device_mesh import init_device_mesh

        layout.mesh = init_device_mesh(device_type, (pp, dp, tp), mesh_dim_names=("pp", "dp", "tp"))
    return layout


def check_model(config, layout: Layout, seq_len: int) -> None:
    """A layout the model can take; each failure names the fix (an option to change: exit 2)."""
    if not layout.model_parallel:
        return
    problem = model_layout_problem(config, tp=layout.tp, pp=layout.pp, schedule=layout.schedule,
                                   microbatches=layout.microbatches, seq_len=seq_len)
    if problem:
        raise UsageError(problem)


def model_layout_problem(config, *, tp: int, pp: int, schedule: str, microbatches: int, seq_len: int) -> str | None:
    """Why this model cannot be split this way (None: it can), naming the fix. One rule for the
    training stages and for `llmkit plan`, so a plan never calls fitting what training refuses."""
    if tp == 1 and pp == 1:
        return None
    if config.arch != "gpt":
        return f"--tp/--pp split Transformer blocks; this model ({config.arch}) has none: leave them out"
    if schedule not in SCHEDULES:
        return f"unknown --pp-schedule {schedule!r}; choose one of: {', '.join(SCHEDULES)}"
    if tp > 1:
        for what, count in (("--n-head", config.n_head), ("--n-kv-head", config.n_kv_head), ("the MLP width", config.mlp_hidden)):
            if count % tp:
                return f"--tp {tp} does not divide {what} ({count}); pick a --tp that divides it"
        if seq_len % tp:
            return (f"--tp {tp} shards the sequence between blocks and does not divide --seq-len {seq_len}; "
                    f"pick a --seq-len that is a multiple of {tp}")
    if pp > 1:
        if schedule == "interleaved-1f1b" and microbatches % pp:
            return f"--pp-schedule interleaved-1f1b needs --pp-microbatches a multiple of --pp {pp}, got {microbatches}"
        if schedule != "gpipe" and microbatches < pp:
            return (f"--pp-schedule {schedule} needs at least as many --pp-microbatches as stages ({pp}), got {microbatches}; "
                    "raise it or leave it out")
        stages = pp * STAGES_PER_RANK[schedule]
        if stages > config.n_layer:
            return (f"--pp {pp} with --pp-schedule {schedule} makes {stages} stages but the model has "
                    f"{config.n_layer} layers; lower --pp or use more layers")
    return None
