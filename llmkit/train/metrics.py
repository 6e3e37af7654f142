"""Training metrics: metrics.jsonl in the run directory, optional TensorBoard, a rich live line.

Only rank 0 logs. metrics.jsonl holds wall-clock figures (tokens/s) and is therefore not part
of the checkpoint's hashed files.
"""

from __future__ import annotations

import json
import math
import time
from pathlib import Path
from typing import Any

import torch

METRICS = "metrics.jsonl"


def measure_bf16_peak(device: torch.device, size: int = 8192, repeats: int = 20) -> float:
    """Achieved bf16 matmul FLOP/s on this GPU (a few seconds)."""
    a = torch.randn(size, size, device=device, dtype=torch.bfloat16)
    b = torch.randn(size, size, device=device, dtype=torch.bfloat16)
    for _ in range(3):
        a @ b
    torch.cuda.synchronize(device)
    start = time.perf_counter()
    for _ in range(repeats):
        a @ b
    torch.cuda.synchronize(device)
    return 2 * size**3 * repeats / (time.perf_counter() - start)


def gpu_peak_flops(device: torch.device) -> float | None:
    """The bf16 peak of the GPU actually present (by name; measured when the name is unknown)."""
    if device.type != "cuda":
        return None
    from llmkit.hardware import by_device_name

    known = by_device_name(torch.cuda.get_device_name(device))
    return known.bf16_flops if known is not None else measure_bf16_peak(device)


def _format_tokens(value: float) -> str:
    for unit, scale in (("M", 1e6), ("k", 1e3)):
        if value >= scale:
            return f"{value / scale:.1f}{unit}"
    return f"{value:.0f}"


def _format_seconds(seconds: float) -> str:
    seconds = int(seconds)
    h, rest = divmod(seconds, 3600)
    m, s = divmod(rest, 60)
    return f"{h}:{m:02d}:{s:02d}" if h else f"{m}:{s:02d}"


def keep_steps_up_to(path: Path, step: int) -> None:
    """A resumed run rewrites history from its checkpoint on: drop a JSONL log's lines past `step`
    (metrics.jsonl, finetune's val_metrics.jsonl)."""
    if not path.is_file():
        return
    kept = []
    for line in path.read_text(encoding="utf-8").splitlines():
        try:
            if json.loads(line).get("step", 0) <= step:
                kept.append(line)
        except ValueError:  # a line cut short when the process was killed
            continue
    path.write_text("".join(line + "\n" for line in kept), encoding="utf-8")


def summary_writer_class():
    """torch's TensorBoard writer, or a one-line error naming the extra that installs it."""
    try:
        from torch.utils.tensorboard import SummaryWriter
    except ImportError as exc:
        from llmkit.errors import UserError

        raise UserError("--tensorboard needs the tensorboard package: pip install 'llmkit[tensorboard]'") from exc
    return SummaryWriter


class MetricsLogger:
    def __init__(self, run_dir: Path, *, enabled: bool, tensorboard: bool, resume_step: int, max_steps: int, log_every: int,
                 last_val: tuple[int, float] | None = None):
        """`last_val`: (step, loss) of the validation a resumed run last made, shown until its next one."""
        self.enabled = enabled
        self.path = run_dir / METRICS
        self.max_steps = max_steps
        self.log_every = max(1, log_every)
        self.writer = None
        self.live = None
        self.start_step = resume_step
        self.last_val = last_val  # (step, loss) of the latest validation
        self.start_time = time.perf_counter()
        if not enabled:
            return
        keep_steps_up_to(self.path, resume_step)
        if tensorboard:
            SummaryWriter = summary_writer_class()
            self.writer = SummaryWriter(log_dir=str(run_dir / "tensorboard"), purge_step=resume_step + 1)
        from llmkit.console import err

        self.console = err
        if err.is_terminal:
            from rich.live import Live
            from rich.text import Text

            self.live = Live(Text(""), console=err, refresh_per_second=4, transient=False)
            self.live.start()

    def log(self, step: int, values: dict[str, Any]) -> None:
        if not self.enabled:
            return
        record = {"step": step, **{k: v for k, v in values.items() if v is not None}}
        with open(self.path, "a", encoding="utf-8") as handle:
            handle.write(json.dumps(record) + "\n")
        if self.writer is not None:
            for key, value in record.items():
                # (not `time`: TensorBoard keeps its own wall time, and its float32 resolves Unix seconds to minutes)
                if key not in ("step", "time") and isinstance(value, (int, float)) and math.isfinite(value):
                    self.writer.add_scalar(f"train/{key}" if not key.startswith("val") else f"val/{key}", value, step)
        if "loss" in values:
            self._show(step, values)

    def _show(self, step: int, values: dict[str, Any]) -> None:
        elapsed = time.perf_counter() - self.start_time
        done = step - self.start_step
        eta = elapsed / done * (self.max_steps - step) if done > 0 else 0.0
        parts = [
            f"step {step}/{self.max_steps}",
            f"loss {values['loss']:.4f}",
            f"lr {values['lr']:.2e}",
        ]
        if values.get("grad_norm") is not None:  # (before clipping: a spike is the first sign of instability)
            parts.append(f"gnorm {values['grad_norm']:.3g}")
        parts.append(f"{_format_tokens(values.get('tokens_per_s', 0.0))} tok/s")
        if values.get("mfu") is not None:
            parts.append(f"MFU {100 * values['mfu']:.1f}%")
        if values.get("peak_memory_gb") is not None:
            parts.append(f"mem {values['peak_memory_gb']:.2f} GB")
        if values.get("val_loss") is not None:
            self.last_val = (step, values["val_loss"])
        if self.last_val is not None:  # the latest validation stays on the line, with its step where that is another
            at, loss = self.last_val
            parts.append(f"val {loss:.4f}" if at == step else f"val@{at} {loss:.4f}")
        parts.append(f"ETA {_format_seconds(eta)}")
        line = " | ".join(parts)
        if self.live is not None:
            from rich.text import Text

            self.live.update(Text(line))
        elif step % self.log_every == 0 or step == self.max_steps or values.get("val_loss") is not None:
            self.console.print(line, soft_wrap=True, highlight=False)

    def note(self, message: str) -> None:
        if self.enabled:
            from llmkit.console import err

            if self.live is not None:
                self.live.console.print(message, soft_wrap=True)
            else:
                err.print(message, soft_wrap=True)

    def close(self) -> None:
        if self.live is not None:
            self.live.stop()
            self.live = None
        if self.writer is not None:
            self.writer.close()
            self.writer = None


def peak_memory_gb(device: torch.device) -> float | None:
    if device.type == "cuda":
        return torch.cuda.max_memory_allocated(device) / 1e9
    peak = peak_rss_bytes()  # CPU: the process's peak resident set
    return peak / 1e9 if peak is not None else None


def peak_rss_bytes() -> int | None:
    """This process's peak resident set. Linux's VmHWM, not getrusage's ru_maxrss: ru_maxrss survives
    exec, so a run started by a large process (a test runner, a notebook) would report its parent's peak."""
    try:
        with open("/proc/self/status", encoding="ascii") as status:
            for line in status:
                if line.startswith("VmHWM:"):
                    return int(line.split()[1]) * 1024
    except OSError:
        pass
    try:
        import resource
    except ImportError:  # pragma: no cover
        return None
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024  # (kilobytes on Linux)
