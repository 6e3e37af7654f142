"""Stage functions for torchrun workers in tests (imported by name from llmkit.train.worker)."""

from __future__ import annotations


def fail_on_rank_one(**_) -> None:
    """Rank 1 fails with a plain Python error after leaving the group (as a run's own shutdown does before the
    error reaches the worker's entry point); rank 0 then sees only the connection go."""
    import torch
    import torch.distributed as dist

    dist.init_process_group("gloo")
    if dist.get_rank() == 1:
        dist.destroy_process_group()
        raise RuntimeError("an injected failure on rank 1")
    value = torch.zeros(1)
    for _ in range(1000):
        dist.all_reduce(value)
