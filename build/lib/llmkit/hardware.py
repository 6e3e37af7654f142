"""Accelerators llmkit knows by name: memory and dense bf16 tensor-core peak.

Used by the training loop (MFU against the GPU present) and by `llmkit plan` (does a layout fit,
how fast would it run). Peaks are the vendors' dense (not sparse) bf16 figures with fp32
accumulation; memory is what the card reports, in GB (10^9 bytes).
"""

from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True)
class Accelerator:
    key: str  # what `llmkit plan --gpu` takes
    name: str  # a substring of torch.cuda.get_device_name()
    memory_gb: float
    bf16_flops: float


ACCELERATORS = (
    Accelerator("h200", "H200", 141.0, 989e12),
    Accelerator("gh200", "GH200", 96.0, 989e12),
    Accelerator("h100-nvl", "H100 NVL", 94.0, 835e12),
    Accelerator("h100-pcie", "H100 PCIe", 80.0, 756e12),
    Accelerator("h100", "H100", 80.0, 989e12),
    Accelerator("b200", "B200", 180.0, 2250e12),
    Accelerator("a100-80gb", "A100-SXM4-80GB", 80.0, 312e12),
    Accelerator("a100-40gb", "A100", 40.0, 312e12),
    Accelerator("a800", "A800", 80.0, 312e12),
    Accelerator("a10g", "A10G", 24.0, 125e12),
    Accelerator("a10", "A10", 24.0, 125e12),
    Accelerator("l40s", "L40S", 48.0, 362e12),
    Accelerator("l40", "L40", 48.0, 181e12),
    Accelerator("l4", "L4", 24.0, 121e12),
    Accelerator("rtx4090", "RTX 4090", 24.0, 165e12),
    Accelerator("rtx3090", "RTX 3090", 24.0, 71e12),
)
BY_KEY = {a.key: a for a in ACCELERATORS}


def by_device_name(name: str) -> Accelerator | None:
    """The entry whose name is the longest substring of a CUDA device name ("NVIDIA H100 80GB HBM3")."""
    for accelerator in sorted(ACCELERATORS, key=lambda a: len(a.name), reverse=True):
        if accelerator.name in name:
            return accelerator
    return None
