"""The training loop shared by pretrain and finetune.

A stage hands the loop a model, a batch provider keyed by global sample index, a loss function
and a description of the checkpoint artifact it makes; the loop owns everything else: the
optimizer and schedule, gradient accumulation, mixed precision, distributed wrapping,
validation, metrics, checkpoints and exact resume.

Step s consumes global samples [s*G, (s+1)*G) where G is the global batch in samples. They are
cut into micro-batches of `micro_batch` samples; data-parallel rank r takes the r-th run of
G / world_size consecutive samples. Any (world size, micro-batch) split of the same G trains
the same model: to the bit with per-sequence gradients (--batch-invariant, the default for a
CPU language model: every token's gradient summed in one fixed tree over the step's samples),
up to floating-point summation order otherwise. Either way the objective is the mean loss over
all the step's targets (tokens; examples for classification): each micro-batch's mean loss
weighs by its share of them, counted before the step over every data-parallel rank.
"""

from __future__ import annotations

import math
import shutil
import time
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any, Callable, Sequence

import torch

from llmkit import artifacts
from llmkit.errors import UserError
from llmkit.model.io import save_weights, weights_state_dict
from llmkit.model.records import CheckpointStats
from llmkit.train import checkpoint as ckpt
from llmkit.train import distributed as dist_utils
from llmkit.train.best import BestWeights
from llmkit.train.early_stop import ValidationStall
from llmkit.train.ema import MovingAverage
from llmkit.train.data_parallel import DataParallelRun
from llmkit.train.distributed import DistInfo
from llmkit.train.launch import discard_replaced_runs
from llmkit.train.metrics import MetricsLogger, gpu_peak_flops, peak_memory_gb
from llmkit.train.objectives import rows_per_example, targets_in
from llmkit.train.optim import build_optimizer, lr_at, set_lr
from llmkit.train.layout import BEST_UNDER_SPLIT_MODEL, EMA_UNDER_FSDP, EMA_UNDER_SPLIT_MODEL
from llmkit.train.options import (CPU_WITHOUT_BF16, Checkpointing, Devices, Numerics, Optimization, cpu_has_bf16_products,
                                  resolve_precision)
from llmkit.train.resuming import Resuming

Batch = tuple[torch.Tensor, ...]
BatchProvider = Callable[[Sequence[int]], Batch]
LossFn = Callable[[torch.nn.Module, Batch], torch.Tensor]


@dataclass
class LoopSettings:
    """The loop's settings: the stage's shared option groups as resolved, and what the stage
    derived from its own options (steps, batch sizes, warmup, peak lr)."""

    optim: Optimization
    checkpoints: Checkpointing
    devices: Devices
    numerics: Numerics
    seed: int
    max_steps: int
    global_batch: int  # samples per optimizer step, across all ranks
    micro_batch: int  # samples per forward/backward on one device (resolved)
    tokens_per_sample: int
    warmup_steps: int
    lr: float
    batch_flag: str = "--batch-tokens"  # the option that sizes a step, for messages (finetune's is --batch-size)
    longer: str = "--max-steps above {step}"  # how to lengthen the run past {step} steps, for messages

    @classmethod
    def for_stage(cls, config: Any, **derived: Any) -> LoopSettings:
        """Settings for a stage config that nests the shared groups (llmkit.train.options)."""
        return cls(optim=config.optim, checkpoints=config.checkpoints, devices=config.devices, numerics=config.numerics,
                   seed=config.seed, **derived)


@dataclass
class ArtifactSpec:
    """What the stage adds to every checkpoint it makes (intermediate and final)."""

    config: dict[str, Any]
    seed: int
    inputs: list[tuple[str, artifacts.Artifact]] = field(default_factory=list)
    stats: CheckpointStats = field(default_factory=CheckpointStats)  # progress and losses are filled in per checkpoint
    runtime: dict[str, Any] = field(default_factory=dict)
    add_files: Callable[[Path], None] = lambda directory: None
    file_names: list[str] = field(default_factory=list)  # extra top-level names add_files writes
    # What an option left unset resolves to in this run ({"seq_len": the context length}): a resume
    # that gives it at that value, or leaves out a value it was given at, continues the same run.
    # A value may be a function of a run's recorded options (one default follows another option).
    unset_means: dict[str, Any] = field(default_factory=dict)
    # False when add_files turns the final weights into a form the model does not train in (LoRA
    # adapters merged): the last step is then also saved as a step checkpoint, which --resume
    # continues from, since the finished run itself cannot be.
    final_weights_trainable: bool = True
    # True when what does not train is the base checkpoint's, unchanged (LoRA): step checkpoints
    # then keep only the parameters that train (megabytes, not the model), and a resume takes the
    # rest from the base, whose fingerprint the resume checks.
    steps_keep_trainable_only: bool = False
    # The model's state dict as the finished run's weights hold it (LoRA: the adapters merged), applied as the
    # final checkpoint is written; RUN/best's weights are made the same way.
    finished_weights: Callable[[dict[str, torch.Tensor]], dict[str, torch.Tensor]] = lambda state: state

    def defaults(self, options: dict[str, Any]) -> dict[str, Any]:
        """What each option left unset means for a run recorded with these options."""
        return {key: value(options) if callable(value) else value for key, value in self.unset_means.items()}


@dataclass
class LoopResult:
    steps: int
    loss: float | None
    val_loss: float | None
    tokens: int
    seconds: float
    tokens_per_s: float
    resumed_from: int | None


class NonFiniteLoss(UserError):
    pass


def accumulation_steps(settings: LoopSettings, batch_ways: int) -> int:
    """Micro-batches per optimizer step on each data rank. The stages have split the batch already
    (llmkit.train.launch.split_batch, which also picks the micro-batch); this is the loop's own
    check for callers of the library that built LoopSettings themselves."""
    per_step = settings.micro_batch * batch_ways
    if settings.global_batch % per_step:
        raise UserError(
            f"the global batch of {settings.global_batch} sequences does not split into micro-batches of "
            f"{settings.micro_batch}, {batch_ways} at a time; change {settings.batch_flag} or --micro-batch so that it divides"
        )
    return settings.global_batch // per_step


def _state_files(spec: ArtifactSpec) -> list[str]:
    from llmkit.model.io import MODEL_CONFIG, WEIGHTS

    return [WEIGHTS, MODEL_CONFIG, ckpt.STATE_JSON, ckpt.STATE_TENSORS, *spec.file_names]


def _describe(build: artifacts.ArtifactBuilder, spec: ArtifactSpec, progress: dict[str, Any]) -> None:
    build.config = spec.config
    # The resume state depends on how the run was laid out (world size, per-rank RNG), not on
    # what it trained: like `runtime`, it stays out of the fingerprint.
    build.state_names = {ckpt.STATE_JSON, ckpt.STATE_TENSORS}
    build.seed = spec.seed
    for role, art in spec.inputs:
        build.add_input(role, art)
    val_loss = progress.get("val_loss")
    build.stats = replace(
        spec.stats, step=progress["step"], tokens_seen=progress["tokens_seen"], train_loss=progress.get("loss"),
        val_loss=val_loss, val_ppl=_perplexity(val_loss, spec.stats),
        val_step=progress.get("val_step") if val_loss is not None else None, **(progress.get("val_scores") or {}),
        stopped_early=progress.get("stopped_early"),
    ).to_dict()
    build.runtime = dict(spec.runtime, train_seconds=progress["seconds"])


def validations_in(max_steps: int, eval_every: int) -> int:
    """How many validations a run of `max_steps` makes: every `eval_every` steps and at the end."""
    return max_steps // eval_every + (max_steps % eval_every > 0) if eval_every > 0 else 0


def _perplexity(val_loss: float | None, stats: CheckpointStats) -> float | None:
    """exp of the validation loss, for a loss over tokens; a classifier's loss is over its labels and
    a preference run's over its pairs, whose exp names nothing (their accuracies say how they do)."""
    return math.exp(min(val_loss, 50.0)) if val_loss is not None and stats.task not in ("classify", "dpo") else None


class Trainer(Resuming):
    """Trains a model under LoopSettings: the steps, validation, metrics and checkpoints (resuming
    them: the Resuming base class)."""

    def __init__(
        self,
        model: torch.nn.Module,
        settings: LoopSettings,
        *,
        info: DistInfo,
        run_dir: Path,
        batches: BatchProvider,
        loss_fn: LossFn,
        spec: ArtifactSpec,
        val_batches: BatchProvider | None = None,
        val_size: int = 0,
        resume: bool = False,
        weights: Path | None = None,
    ):
        """`weights`: for a model built on the meta device (split with --tp/--pp), the safetensors
        file its parts are read from (--init-from) instead of being initialised; a resume reads the
        checkpoint's instead."""
        self.settings, self.info, self.run_dir = settings, info, Path(run_dir)
        if info.is_main:
            self.run_dir.mkdir(parents=True, exist_ok=True)
        self.batches, self.spec, self.loss_fn = batches, spec, loss_fn
        self.val_batches, self.val_size = val_batches, val_size
        self.accum = accumulation_steps(settings, info.batch_ways)
        self.device = info.device
        # Split across ranks (--tp/--pp), each rank moves only its share to its device (the engine does):
        # the whole model on every GPU is what a pipeline exists to avoid.
        self.model_parallel = info.layout is not None and info.layout.model_parallel
        self.raw = model if self.model_parallel else model.to(self.device)
        self.start_step = 0
        self.last_loss: float | None = None
        self.last_val: float | None = None
        self.last_val_step: int | None = None  # the step last_val was measured at (a save step need not validate)
        # a task's own validation figures beside the loss (classification: val_accuracy, val_f1), same step
        self.last_val_scores: dict[str, float] = {}
        self.last_grad_norm: float | None = None
        self.seconds_before, self.session_start = 0.0, time.perf_counter()
        self.resumed_from: int | None = None
        self.tokens_seen = 0  # over the whole run, resumed sessions included
        self._weights_file: Path | None = weights

        saved_rng = None
        self.stall = ValidationStall()  # the validation losses so far (--patience; a resume reads the saved ones)
        self.stopped_early = False
        self.stop_cause: ValidationStall | None = None  # a resume's: the losses up to where its rule would have stopped
        self._saved_ema: dict[str, torch.Tensor] = {}
        self._saved_best: tuple[dict[str, torch.Tensor], dict[str, Any] | None] = ({}, None)
        if resume:
            saved_rng = self._load_weights_for_resume()
        self.ema = self._start_ema()
        self.best = self._start_best()
        if settings.checkpoints.patience and (self.val_batches is None or self.val_size <= 0):
            raise UserError(f"--patience {settings.checkpoints.patience} counts validations, and this run has no validation "
                            "data (pretrain: tokens made with --val-fraction 0; finetune: give --val-data or a "
                            "--val-fraction that holds examples back); leave --patience out or give the run validation data")
        # Different dropout streams per rank (per-sequence gradients seed each sequence's masks
        # instead: llmkit/model/sequence_dropout.py); model init (done by the caller) is identical on all.
        torch.manual_seed(settings.seed + 1 + info.rank)
        # The whole model's FLOPs, counted before a layout splits it (MFU divides by the world size).
        self.flops_per_token = self.raw.flops_per_token(settings.tokens_per_sample)
        optim = settings.optim
        devices = settings.devices
        self.precision = resolve_precision(settings.numerics.precision, self.device.type)
        if self.precision == "bf16" and self.device.type == "cpu" and info.is_main and not cpu_has_bf16_products():
            from llmkit.console import note

            note(CPU_WITHOUT_BF16)
        data_ways = info.layout.dp if self.model_parallel else info.world_size
        if devices.strategy == "fsdp" and data_ways == 1 and info.is_main:
            from llmkit.console import note

            note("--strategy fsdp shards the weights over data-parallel processes, and this run has one"
                 + (" (--tp/--pp split the model instead)" if self.model_parallel else "") + ": nothing is sharded")
        # The engine applies the layout and runs the steps: the model split (--tp/--pp) or whole on every rank.
        if self.model_parallel:
            from llmkit.train.model_parallel import ModelParallelRun

            self.engine = ModelParallelRun(self.raw, info.layout, self.device, seq_len=settings.tokens_per_sample,
                                           strategy=devices.strategy, activation_checkpointing=devices.activation_checkpointing,
                                           compile=devices.compile, loss_fn=loss_fn, precision=self.precision,
                                           weights=self._weights_file)
        else:
            self.engine = DataParallelRun(self.raw, info, self.device, strategy=devices.strategy,
                                          activation_checkpointing=devices.activation_checkpointing, compile=devices.compile,
                                          loss_fn=loss_fn, precision=self.precision, batch_invariant=devices.batch_invariant,
                                          sequences_per_rank=self.accum * settings.micro_batch * rows_per_example(loss_fn), seed=settings.seed,
                                          batch_flag=settings.batch_flag)
        self.model = self.engine.model
        self.spec.runtime["batch_invariant"] = getattr(self.engine, "batch_invariant", False)  # what the option resolved to
        if self.device.type == "cpu":  # the fp32 products' library: their last bits, so the fingerprint, follow it
            from llmkit.model import cpu_gemm

            self.spec.runtime["cpu_products"] = cpu_gemm.library()
        why = getattr(self.engine, "not_invariant_because", None)
        # for the run's header line: how gradients are summed, where that decides the CPU fingerprint
        bf16_cpu = self.device.type == "cpu" and self.precision == "bf16"  # PyTorch's bf16 products: bits by thread count
        self.gradient_note = (", per-sequence gradients" + (" (bf16: the same bits at the same threads a process)" if bf16_cpu else "")
                              if self.spec.runtime["batch_invariant"] else
                              f", gradients summed as usual, so the split and the threads can change the weights' bits ({why})"
                              if why else "")
        self.optimizer = build_optimizer(
            self.engine.optimizer_target, optim.optimizer, lr=settings.lr,
            weight_decay=optim.weight_decay, betas=(optim.beta1, optim.beta2), momentum=optim.momentum,
            device_type=self.device.type,
        )
        if saved_rng is not None:
            self._restore_optimizer_and_rng(*saved_rng)
        self.peak_flops = gpu_peak_flops(self.device)

    # -- the moving average of the weights (--ema) -------------------------------------------
    def _start_ema(self) -> MovingAverage | None:
        """The average from the weights, or the resumed one; None without --ema."""
        decay = self.settings.checkpoints.ema
        if decay is None:
            return None
        if self.settings.devices.strategy == "fsdp" and self.info.distributed:
            raise UserError(EMA_UNDER_FSDP)
        if self.model_parallel:
            raise UserError(EMA_UNDER_SPLIT_MODEL)
        return MovingAverage(self.raw, decay, self.device, self._saved_ema)

    def _start_best(self) -> BestWeights | None:
        """The best weights so far (the resumed ones, or none yet); None without --keep-best."""
        if not self.settings.checkpoints.keep_best:
            return None
        if self.model_parallel or self.settings.devices.strategy == "fsdp" and self.info.distributed:
            raise UserError(BEST_UNDER_SPLIT_MODEL)
        if self.val_batches is None or self.val_size <= 0:
            raise UserError("--keep-best keeps the weights of the lowest validation loss, and this run has no validation "
                            "data (pretrain: tokens made with --val-fraction 0; finetune: give --val-data or a "
                            "--val-fraction that holds examples back); leave --keep-best out or give the run validation data")
        return BestWeights(self.raw, *self._saved_best, keeps_values=self.info.is_main)

    # -- one step ---------------------------------------------------------------------------
    def _micro_indices(self, step: int, micro: int) -> range:
        s, info = self.settings, self.info
        # A pipeline step takes `microbatches` consecutive micro-batches (1 without a pipeline).
        # Each data-parallel rank takes consecutive samples of the step: the per-sequence
        # gradient tree (--batch-invariant) merges ranks' blocks along the positions.
        per_call = s.micro_batch * (info.layout.microbatches if info.layout is not None else 1)
        start = step * s.global_batch + (info.data_rank * self.accum + micro) * per_call
        return range(start, start + per_call)

    def step_tokens(self, step: int) -> int:
        """The tokens step `step` (from 0) feeds the model over all ranks: its samples' own lengths
        where the batches can tell (fine-tuning pads each row to its micro-batch, not to --seq-len),
        else --seq-len a sample (pretraining's full windows). Every rank counts the same: no messages."""
        s = self.settings
        count = getattr(self.batches, "tokens", None)
        if count is None:
            return s.global_batch * s.tokens_per_sample
        return count(range(step * s.global_batch, (step + 1) * s.global_batch))

    def train_step(self, step: int) -> tuple[float, float]:
        s = self.settings
        lr = lr_at(step, lr=s.lr, warmup_steps=s.warmup_steps, max_steps=s.max_steps, schedule=s.optim.schedule,
                   min_lr_ratio=s.optim.min_lr_ratio)
        set_lr(self.optimizer, lr)
        self.model.train()
        loss_sum = torch.zeros((), device=self.device)
        padding = {}
        if getattr(self.engine, "batch_invariant", False) and hasattr(self.batches, "pad_width"):
            # Every micro-batch padded as long as the step's longest sequence: a sequence's
            # shapes (and so its numbers) are then the same however the step is split.
            padding["width"] = self.batches.pad_width(range(step * s.global_batch, (step + 1) * s.global_batch))
        steps = [self._micro_indices(step, micro) for micro in range(self.accum)]
        batches = [self.batches(indices, **padding) for indices in steps]
        # The step's loss is the mean over all its targets (tokens, or examples) on every rank:
        # each micro-batch's mean weighs by its share, so the split does not change the objective.
        counts = [targets_in(self.loss_fn, batch) for batch in batches]  # on the host: no device sync
        total = self.engine.step_total(sum(counts))
        for micro, (indices, batch, count) in enumerate(zip(steps, batches, counts)):
            last = micro == self.accum - 1
            loss = self.engine.forward_backward(dist_utils.to_device(batch, self.device), count, total, last,
                                                position=indices.start - step * s.global_batch, step=step)
            loss_sum += loss * count  # each micro-batch's mean weighs by its targets: the step's mean whatever the split
        self.engine.finish_gradients()
        loss_value = self.engine.step_loss(total, s.global_batch) if getattr(self.engine, "batch_invariant", False) else None
        if loss_value is None:
            # mean_loss averages over the data-parallel replicas: their sum over the step's target count
            loss_value = float(self.engine.mean_loss(loss_sum * (self.info.data_parallel / total if total else math.nan)))
        if not math.isfinite(loss_value):
            self._stop(f"loss became {loss_value} at step {step + 1}; stopped before updating the weights", step)
        # The norm before clipping goes to metrics.jsonl; with --grad-clip 0 the factor is exactly 1.
        max_norm = s.optim.grad_clip if s.optim.grad_clip > 0 else math.inf
        self.last_grad_norm = self.engine.clip(max_norm)
        if not math.isfinite(self.last_grad_norm):  # a finite loss can still overflow its gradient
            self._stop(f"the gradient norm became {self.last_grad_norm} at step {step + 1} (loss {loss_value:.4g}); "
                       "stopped before updating the weights", step)
        self.optimizer.step()
        if self.ema is not None:
            self.ema.update(step + 1)
        self.optimizer.zero_grad(set_to_none=True)
        return loss_value, lr

    def _stop(self, what: str, failed_weights: int) -> None:
        """Refuse to go on (or save) with weights that are, or are about to be, not finite.
        `failed_weights`: the update count of the weights that gave the non-finite value; the good
        checkpoints are the ones before it (a checkpoint of those very weights would fail again)."""
        self.optimizer.zero_grad(set_to_none=True)
        saved = ckpt.step_dirs(self.run_dir)
        good = [d for d in saved if int(d.name.removeprefix("step_")) < failed_weights]
        last = good[-1] if good else None
        fix = "lower --lr, raise --warmup-steps or keep --grad-clip on"
        # (--resume keeps a run's options, so the way on with new ones is a new run from those weights)
        if last:
            raise NonFiniteLoss(f"{what}, the last good checkpoint is {last}; {fix}, then start over with --force or "
                                "start a new run from that checkpoint's weights (pretrain --init-from, finetune)")
        if saved:  # the run directory is kept for them, though resuming from one would fail the same way
            raise NonFiniteLoss(f"{what}, and the only checkpoint written, {saved[-1]}, holds the weights that failed (no good "
                                f"one is kept); {fix}, then start over with --force")
        raise NonFiniteLoss(f"{what}, no checkpoint was written yet (nothing is kept); {fix} and run it again")

    # -- validation -------------------------------------------------------------------------
    @torch.no_grad()
    def evaluate(self) -> float | None:
        if self.val_batches is None or self.val_size <= 0:
            return None
        return self.engine.evaluate(self.val_batches, self.val_size, self.settings.micro_batch)

    # -- checkpoints ------------------------------------------------------------------------
    def _progress(self, step: int) -> dict[str, Any]:
        s = self.settings
        return {
            "step": step,
            "samples_seen": step * s.global_batch,
            "tokens_seen": self.tokens_seen,
            "global_batch": s.global_batch,
            "tokens_per_sample": s.tokens_per_sample,
            "world_size": self.info.world_size,
            # wall time spent training, over every session of the run (not hashed: state and runtime only)
            "seconds": round(self.seconds_before + time.perf_counter() - self.session_start, 3),
            "loss": self.last_loss,
            "val_loss": self.last_val,
            "val_step": self.last_val_step,
            "val_scores": self.last_val_scores,
            "ema": self.settings.checkpoints.ema,  # the decay of the average saved beside (checked on resume)
            "keep_best": self.best is not None,  # (checked on resume)
            "best": self.best.record if self.best is not None else None,  # the validation the saved best weights scored at
            "validation_stall": self.stall.to_progress(),
            "stopped_early": ((self.stop_cause or self.stall).stopped_record(s.checkpoints, ran_to=self.stall)
                              if self.stopped_early else None),
            "schedule": {
                "name": s.optim.schedule, "lr": s.lr, "warmup_steps": s.warmup_steps,
                "max_steps": s.max_steps, "min_lr_ratio": s.optim.min_lr_ratio,
            },
        }

    def _write_checkpoint_files(self, directory: Path, step: int, *, final: bool = False) -> None:
        """Collective: every rank gathers, rank 0 writes into `directory`."""
        model_state, optim_state = self.engine.full_state(self.optimizer)
        rng = {kind: dist_utils.all_gather_bytes(state, self.info) for kind, state in ckpt.rng_states(self.device).items()}
        if self.info.is_main:
            progress = self._progress(step)
            if self.spec.steps_keep_trainable_only and not final:
                trains = ckpt.trainable_names(self.raw)
                model_state = {name: value for name, value in model_state.items() if name in trains}
                progress["weights"] = ckpt.TRAINABLE_ONLY
            if final:  # (LoRA: the adapters merged before the one write, not re-read and written again)
                model_state = self.spec.finished_weights(weights_state_dict(self.raw, model_state))
            save_weights(self.raw, directory, model_state)
            extra = {**(self.ema.saved_tensors() if self.ema is not None else {}),
                     **(self.best.saved_tensors() if self.best is not None else {})}
            ckpt.write_training_state(directory, optim_state, progress, rng, extra)
            self.spec.add_files(directory)

    def save_intermediate(self, step: int, *, last: bool = False) -> None:
        """RUN/checkpoints/step_N. `last`: the run's final step, which is a save step too: that
        copy of the final weights is kept beside the --keep-last intermediate ones, not in their place."""
        target = self.run_dir / ckpt.CHECKPOINTS / ckpt.STEP_DIR.format(step)
        if self.info.is_main:
            target.parent.mkdir(parents=True, exist_ok=True)
            with artifacts.create(target, "checkpoint", force=True, lock=False) as build:  # the run holds the lock
                self._write_checkpoint_files(build.dir, step)
                # (where --patience ends the run is the run's to say: a step copy stays the step of any run that goes on)
                _describe(build, self.spec, {**self._progress(step), "stopped_early": None})
            discard_replaced_runs(self.run_dir)
            keep = self.settings.checkpoints.keep_last
            ckpt.prune(self.run_dir, keep + 1 if last and keep else keep)
        else:
            self._write_checkpoint_files(self.run_dir, step)  # joins the collectives; writes nothing
        dist_utils.barrier(self.info)

    def save_final(self, step: int) -> None:
        """RUN itself becomes the checkpoint artifact; its manifest is written last."""
        if self.info.is_main:
            (self.run_dir / artifacts.MANIFEST).unlink(missing_ok=True)
        self._write_checkpoint_files(self.run_dir, step, final=True)
        if self.info.is_main:
            build = artifacts.in_place_builder(self.run_dir, "checkpoint")
            _describe(build, self.spec, self._progress(step))
            artifacts.finalize_in_place(build, _state_files(self.spec))
            discard_replaced_runs(self.run_dir)
            self._keep_the_last_checkpoints(step)
            self._write_companions(step)
        dist_utils.barrier(self.info)

    def _keep_the_last_checkpoints(self, step: int, keep: int | None = None) -> None:
        """--keep-last at the run's end (a save prunes too): a run extended past a final save step kept
        that copy beside the newer ones; the final step's own copy, where it has one, is kept beside them.
        `keep`: another count than this command's (a finished run resumed keeps to the one it ran with)."""
        keep = self.settings.checkpoints.keep_last if keep is None else keep
        final_copy = (self.run_dir / ckpt.CHECKPOINTS / ckpt.STEP_DIR.format(step)).is_dir()
        ckpt.prune(self.run_dir, keep + 1 if final_copy and keep else keep)

    def _write_companions(self, step: int) -> None:
        """RUN/ema, RUN/average and RUN/best: checkpoints beside the run's, with the run as an input."""
        from llmkit.model.averaging import write_average

        earlier = self._checkpoints_to_average(step)
        best = self.best.record if self.best is not None else None
        self._remove_stale_companions(ema=self.ema is not None, average=bool(earlier), best=best is not None)
        run = artifacts.load(self.run_dir, kind="checkpoint")
        # without the run's validation figures (_describe adds them to its own): not these weights'
        stats = replace(self.spec.stats, step=step, tokens_seen=self._progress(step)["tokens_seen"]).to_dict()
        if self.ema is not None:
            decay = self.settings.checkpoints.ema
            write_average(self.run_dir / "ema", [run], [1.0], state=weights_state_dict(self.raw, self.ema.state_dict()),
                          config=dict(self.spec.config, weights=f"exponential moving average, decay min({decay}, (1+t)/(10+t)) "
                                      "after update t", ema=decay),
                          seed=self.spec.seed, stats=stats, force=True, lock=False, roles=["run"], guard_inputs=False)
        if best is not None:
            # with the figures of the validation that chose them: these weights' own
            scored = replace(self.spec.stats, step=best["step"], tokens_seen=best["tokens_seen"], val_loss=best["val_loss"],
                             val_ppl=_perplexity(best["val_loss"], self.spec.stats), val_step=best["step"],
                             **best["val_scores"]).to_dict()
            weights = self.spec.finished_weights(weights_state_dict(self.raw, self.best.state_dict()))
            write_average(self.run_dir / "best", [run], [1.0], state=weights,
                          config=dict(self.spec.config, weights=f"the lowest validation loss of the run, {best['val_loss']:.6g} "
                                      f"after step {best['step']}", keep_best=True),
                          seed=self.spec.seed, stats=scored, force=True, lock=False, roles=["run"], guard_inputs=False)
        count, save_every = self.settings.checkpoints.average_last, self.settings.checkpoints.save_every
        if count > 1 and len(earlier) < count - 1:
            from llmkit.console import note

            saved = (step - 1) // save_every + 1 if save_every else 1  # (the steps saved before the last, and the final)
            if earlier and len(earlier) + 1 < saved:
                note(f"--average-last {count}: only {len(earlier) + 1} of the run's checkpoints are left (an earlier "
                     "--keep-last removed the older ones), so RUN/average is the mean of those")
            elif earlier:
                note(f"--average-last {count}: the run saved only {len(earlier) + 1} checkpoint(s) (--save-every "
                     f"{save_every}, {step} steps), so RUN/average is the mean of those")
            else:
                note(f"--average-last {count}: the run saved no checkpoint before its final one (--save-every "
                     f"{save_every}, {step} steps), so there is nothing to average: no RUN/average (it would be the "
                     "final weights again)")
        if earlier:
            members = [artifacts.load(d, kind="checkpoint") for d in earlier] + [run]
            write_average(self.run_dir / "average", members, [1.0 / len(members)] * len(members),
                          config=dict(self.spec.config, weights=f"mean of the last {len(members)} checkpoints",
                                      average_last=count), seed=self.spec.seed, stats=stats, force=True, lock=False,
                          roles=[f"member:{m.path.name}" for m in members[:-1]] + ["member:final"], guard_inputs=False)

    def _checkpoints_to_average(self, step: int) -> list[Path]:
        """The saved checkpoints --average-last averages with the final one (none: no RUN/average)."""
        count = self.settings.checkpoints.average_last
        if count < 2:
            return []
        return [d for d in ckpt.step_dirs(self.run_dir) if ckpt.saved_step(d) < step][-(count - 1):]

    def _companions_current(self, step: int) -> bool:
        """Whether RUN/ema and RUN/average are there, as this run's settings ask, and were made
        from the run as it is now (not from an end it had before it was extended)."""
        run = artifacts.load(self.run_dir, kind="checkpoint", check=False).fingerprint
        wanted = {"ema": ("run", self.ema is not None),
                  "average": ("member:final", bool(self._checkpoints_to_average(step))),
                  "best": ("run", self.best is not None and self.best.record is not None)}
        for name, (role, expected) in wanted.items():
            folder = self.run_dir / name
            if not expected:
                if folder.exists() and not self._of_this_run(name, run):
                    return False  # stale: _write_companions removes it
                continue  # (one of the run as it is, though not asked for now: a finished run stays as it was)
            if artifacts.manifest_kind(folder) != "checkpoint":
                return False
            companion = artifacts.load(folder, check=False)
            recorded = companion.recorded_input(role)
            if recorded is None or recorded.fingerprint != run:
                return False
            if name == "average" and companion.config.get("average_last") != self.settings.checkpoints.average_last:
                return False  # another --average-last K on resume: the mean of the last K, rebuilt
        return True

    def _of_this_run(self, name: str, run: str | None = None) -> bool:
        """Whether RUN/NAME is a companion made from the run as it is now (its recorded run input's
        fingerprint is the run's, `run` where the caller has read it)."""
        folder = self.run_dir / name
        if artifacts.manifest_kind(folder) != "checkpoint":
            return False
        recorded = artifacts.load(folder, check=False).recorded_input("member:final" if name == "average" else "run")
        run = run or artifacts.load(self.run_dir, kind="checkpoint", check=False).fingerprint
        return recorded is not None and recorded.fingerprint == run

    def _remove_stale_companions(self, *, ema: bool, average: bool, best: bool) -> None:
        """A finished run extended without --average-last (or from before --ema was checked on
        resume) would keep the companions of its earlier end inside it, naming a run that is gone."""
        from llmkit.console import note

        for name, rewritten in (("ema", ema), ("average", average), ("best", best)):
            stale = self.run_dir / name
            if rewritten and stale.is_dir() and artifacts.manifest_kind(stale) is None:
                # the rest of one this method was removing when the run was killed (its manifest goes first):
                # the run's own, to write again (the write refused a folder with no manifest, saying --force)
                shutil.rmtree(stale, ignore_errors=True)
                continue
            if not rewritten and stale.is_dir():
                if self._of_this_run(name):  # (a finished run resumed with nothing to train, without the flag: kept)
                    continue
                (stale / artifacts.MANIFEST).unlink(missing_ok=True)  # first: a kill midway leaves no artifact
                shutil.rmtree(stale, ignore_errors=True)
                flag = {"ema": "--ema", "average": "--average-last", "best": "--keep-best"}[name]
                has_none = f"this run has no {flag}"
                if name == "average" and self.settings.checkpoints.average_last > 1:
                    has_none = "this run saved no checkpoint to average with its final one"
                note(f"removed {stale}, which an earlier command made; {has_none}")

    # -- the run ----------------------------------------------------------------------------
    def run(self) -> LoopResult:
        s, info = self.settings, self.info
        eval_every, save_every, log_every = s.checkpoints.eval_every, s.checkpoints.save_every, s.devices.log_every
        if self.info.is_main and self.start_step == 0:
            (self.run_dir / artifacts.MANIFEST).unlink(missing_ok=True)
        logger = MetricsLogger(
            self.run_dir, enabled=info.is_main, tensorboard=s.devices.tensorboard, resume_step=self.start_step,
            max_steps=s.max_steps, log_every=log_every,
            last_val=(self.last_val_step, self.last_val) if self.last_val is not None and self.last_val_step else None,
        )
        tokens_before = self.tokens_seen
        started = time.perf_counter()
        # Speed counts the training steps' own time (not validation or checkpoint writes), over the
        # steps since the last log line; the session's first step (allocations, compilation) alone.
        window_seconds, window_tokens, session_first = 0.0, 0, self.start_step + 1
        step = self.start_step
        patience, rule = s.checkpoints.patience, s.checkpoints
        # (replayed over the saved losses: a smaller --min-delta or --patience may have stopped it at an earlier validation)
        self.stop_cause = self.stall.first_stop(rule) if self.resumed_from is not None else None
        stopped = self.stop_cause is not None
        why = ""
        if stopped:
            at = self.stop_cause.history[-1][0]
            why = (self.stop_cause.reason(rule) if at == step else
                   f"with these options it would have stopped at step {at}, where {self.stop_cause.reason(rule)}")
        if (self.resumed_from == s.max_steps or stopped) and (self.run_dir / artifacts.MANIFEST).is_file():
            # Finished already: the artifact stays as it is (its config and fingerprint included).
            if self.resumed_from == s.max_steps:
                logger.note(f"the run finished at step {step} already: nothing to train, its weights and manifest are "
                            f"unchanged (give {s.longer.format(step=step)} to train further)")
            else:  # (stopped early, or finished with more validations since its best than this --patience allows)
                logger.note(f"the run ends at step {step} already: {why}; nothing to train, its weights and manifest are "
                            f"unchanged ({self.stall.to_train_further(rule)})")
            if info.is_main:  # (killed between the run's manifest and save_final's pruning: the run's own --keep-last)
                manifest = artifacts.load(self.run_dir, kind="checkpoint", check=False).manifest
                recorded = manifest.runtime.get("keep_last", manifest.config.get("keep_last"))  # (in its config before 12-02)
                self._keep_the_last_checkpoints(step, recorded if isinstance(recorded, int) else 0)
            if info.is_main and not self._companions_current(step):
                # killed between the run's manifest and its companions (written after, as they name it)
                logger.note("writing its --ema / --average-last / --keep-best companions, missing or from an earlier end of the run")
                self._write_companions(step)
            dist_utils.barrier(info)
            logger.close()
            return LoopResult(steps=step, loss=self.last_loss, val_loss=self.last_val, tokens=self.tokens_seen,
                              seconds=0.0, tokens_per_s=0.0, resumed_from=self.resumed_from)
        try:
            if self.resumed_from is not None and not stopped:
                left = s.max_steps - self.start_step
                logger.note(f"resumed from step {self.start_step} ({left} step{'' if left == 1 else 's'} to go)")
            elif self.resumed_from is None and patience and validations_in(s.max_steps, eval_every) <= patience + 1:
                # (a stop needs a best, then --patience validations without a lower loss, before the last)
                logger.note(f"note: --patience {patience} needs {patience + 2} validations or more to stop a run early, and "
                            f"this one makes {validations_in(s.max_steps, eval_every)} (every --eval-every {eval_every} steps "
                            "and at the end); lower --eval-every or --patience")
            elif self.resumed_from is None and s.warmup_steps >= s.max_steps:
                logger.note(f"note: --warmup-steps {s.warmup_steps} is not shorter than the run ({s.max_steps} steps): the "
                            "learning rate rises all the way (reaching --lr at the last step at most) and never decays; "
                            "lower --warmup-steps for a decay")
            if stopped:  # (a run killed after more validations without a lower loss than this --patience allows)
                self.stopped_early = True
                logger.note(f"stopped early at step {step}: {why}")
            while step < s.max_steps and not self.stopped_early:
                began = time.perf_counter()
                loss, lr = self.train_step(step)
                window_seconds += time.perf_counter() - began
                tokens = self.step_tokens(step)
                self.tokens_seen += tokens
                window_tokens += tokens
                step += 1
                self.last_loss = loss
                # tokens: trained on so far, for a plot against tokens while the run has no checkpoint to say its batch
                values: dict[str, Any] = {"loss": loss, "lr": lr, "grad_norm": self.last_grad_norm, "tokens": self.tokens_seen,
                                          "time": round(time.time(), 3)}  # (wall-clock: loss against time, across sessions)
                tokens_per_s = window_tokens / max(window_seconds, 1e-9)
                values["tokens_per_s"] = tokens_per_s
                values["tokens_per_s_per_device"] = tokens_per_s / info.world_size
                if self.peak_flops:
                    values["mfu"] = self.flops_per_token * tokens_per_s / info.world_size / self.peak_flops
                # the latest window's speed also goes to each checkpoint's manifest (runtime: not hashed)
                self.spec.runtime.update({k: values[k] for k in ("tokens_per_s", "tokens_per_s_per_device", "mfu") if k in values})
                values["peak_memory_gb"] = peak_memory_gb(self.device)
                if eval_every > 0 and (step % eval_every == 0 or step == s.max_steps):
                    self.last_val = self.evaluate()
                    self.last_val_step = step
                    if self.last_val is not None:
                        values["val_loss"] = self.last_val
                        perplexity = _perplexity(self.last_val, self.spec.stats)
                        if perplexity is not None:
                            values["val_ppl"] = perplexity
                        if not math.isfinite(self.last_val):
                            logger.log(step, values)
                            self._stop(f"the validation loss became {self.last_val} after step {step}: the weights "
                                       "diverged and were not saved", step)
                        if self.best is not None:
                            self.best.offer(self.last_val, step=step, tokens_seen=self.tokens_seen, val_scores=self.last_val_scores)
                        self.stall.record(self.last_val, step)
                        self.stopped_early = self.stall.stops(rule) and step < s.max_steps
                logger.log(step, values)
                if self.stopped_early:
                    best_step = self.stall.best[0]
                    best_copy = self.run_dir / ckpt.CHECKPOINTS / ckpt.STEP_DIR.format(best_step)
                    kept = ("" if self.best is not None or best_step == step else  # (the run's own weights are the best)
                            f" (the run's weights are step {step}'s; step {best_step}'s are in {best_copy})"
                            if best_copy.is_dir() else
                            f" (the run's weights are step {step}'s; step {best_step}'s were not kept: "
                            "--keep-best keeps them)")
                    logger.note(f"stopped early at step {step}: {self.stall.reason(rule)}{kept}")
                if step % log_every == 0 or step == session_first:
                    window_seconds, window_tokens = 0.0, 0
                if save_every > 0 and step % save_every == 0 and step < s.max_steps and not self.stopped_early:
                    self.save_intermediate(step)
            last_is_a_save_step = save_every > 0 and step % save_every == 0
            if (last_is_a_save_step or not self.spec.final_weights_trainable) and self.resumed_from != step:
                self.save_intermediate(step, last=True)
            self.save_final(step)
        except torch.cuda.OutOfMemoryError as exc:
            error = UserError(
                f"CUDA out of memory at step {step + 1} with --micro-batch {s.micro_batch}: lower --micro-batch "
                "(gradient accumulation keeps the global batch), use --strategy fsdp with several GPUs, or a smaller --model"
            )
            error.keeps_work = True  # (--micro-batch may change on resume: the run is kept, llmkit.train.launch)
            raise error from exc
        finally:
            logger.close()
        seconds = time.perf_counter() - started
        trained_tokens = self.tokens_seen - tokens_before
        return LoopResult(
            steps=step, loss=self.last_loss, val_loss=self.last_val, tokens=self.tokens_seen, seconds=seconds,
            tokens_per_s=trained_tokens / seconds if seconds > 0 else 0.0, resumed_from=self.resumed_from,
        )
