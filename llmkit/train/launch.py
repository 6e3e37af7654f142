"""Launching a training stage: the run directory, torchrun, and each worker's process setup.

    launch(_train, out, config, devices=config.devices, resume=resume, force=force, tokens=str(tokens))

`launch` checks the devices, prepares the run directory on the first process only (another
node, or a non-zero rank started by an outside torchrun, finds it prepared and must neither
refuse nor empty it), then runs `entry(config=..., out=..., resume=..., **inputs)` here, or in
every process under torchrun when the run spans several. The config always travels as its
flat option dict, in-process too, so both paths run the same round trip.

Inside `entry`, `worker_process(devices)` sets the CPU threads and joins the process group,
`split_batch` cuts the global batch into micro-batches and `runtime_record` says in the
manifest how the run executed. Pretrain, finetune and any later training stage use these.
"""

from __future__ import annotations

import os
import shutil
from contextlib import contextmanager
from pathlib import Path
from typing import Any, Callable, Iterator

from llmkit.errors import UsageError, UserError
from llmkit.options import Options
from llmkit.train.options import Devices


def first_process(devices: Devices) -> bool:
    """True on the process that owns the run directory: rank 0, or node 0 before torchrun starts."""
    from llmkit.train import distributed

    if distributed.under_torchrun():
        return os.environ.get("RANK") == "0"
    return devices.node_rank == 0


def launch(entry: Callable[..., None], out: Path, config: Options, *, devices: Devices, resume: bool, force: bool,
           **inputs: str) -> Path:
    """Run a training stage's `entry` on the devices asked for; returns the run directory."""
    from llmkit.train import distributed
    from llmkit.train.checkpoint import prepare_run_dir

    out = Path(out)
    gpus = distributed.resolve_gpus(devices.gpus)
    distributed.check_gpus(gpus)
    if gpus > 0 and devices.nproc > 1:
        raise UsageError("--nproc sets CPU processes; with GPUs use --gpus N (one process per GPU)")
    if first_process(devices):
        prepare_run_dir(out, resume=resume, force=force)
    else:
        out.mkdir(parents=True, exist_ok=True)
    arguments: dict[str, Any] = {"config": config.flat(), "out": str(out.resolve()), "resume": resume, **inputs}
    per_node = gpus if gpus > 0 else devices.nproc
    if (per_node > 1 or devices.nnodes > 1) and not distributed.under_torchrun():
        distributed.relaunch(
            f"{entry.__module__}:{entry.__name__}", arguments, out / ".launch",
            nproc=per_node, nnodes=devices.nnodes, node_rank=devices.node_rank,
            master_addr=devices.master_addr, master_port=devices.master_port,
        )
        shutil.rmtree(out / ".launch", ignore_errors=True)
    else:
        entry(**arguments)
    return out


@contextmanager
def worker_process(devices: Devices) -> Iterator[Any]:
    """This process's threads, process group and device, for the length of the block."""
    import torch

    from llmkit.train import distributed

    if devices.threads > 0:
        torch.set_num_threads(devices.threads)
    info = distributed.init(distributed.resolve_gpus(devices.gpus))
    try:
        yield info
    finally:
        distributed.shutdown()


def split_batch(global_batch: int, micro_batch: int, world: int, *, what: str, fix: Callable[[int], str]) -> tuple[int, int]:
    """(micro-batch, accumulation steps) for a global batch of samples over `world` processes.

    The micro-batch shrinks when the global batch is smaller than one micro-batch per process;
    a global batch that does not divide is an error naming `what` was asked and `fix(multiple)`.
    """
    micro = max(1, min(micro_batch, global_batch // world))
    if global_batch % (micro * world):
        raise UserError(f"{what} does not split into micro-batches of {micro} on {world} process(es); {fix(micro * world)}")
    return micro, global_batch // (micro * world)


def runtime_record(devices: Devices, info: Any, micro_batch: int, accumulation: int) -> dict[str, Any]:
    """The manifest's `runtime` of a training run: the device options and what they resolved to."""
    return dict(devices.runtime(), world_size=info.world_size, device=str(info.device), micro_batch=micro_batch,
                grad_accumulation=accumulation)
