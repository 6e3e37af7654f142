"""Resuming a training run from its latest checkpoint: the Trainer's part that finds it, checks
that this run continues the same one (model, seed, inputs, options, moving average: only the
length, validation and saving may change), loads its weights and restores the optimizer and the
random streams, and records the learning rates the steps so far trained under where the run's
length changed them.

A base class of llmkit.train.loop.Trainer, whose attributes (settings, info, run_dir, spec, raw,
engine, optimizer, ...) it reads and sets; split off to keep each file about one concern.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from llmkit import artifacts
from llmkit.errors import UserError
from llmkit.model.gpt import unmaterialised
from llmkit.train import checkpoint as ckpt
from llmkit.train.best import BestWeights
from llmkit.train.early_stop import ValidationStall
from llmkit.train.metrics import METRICS
from llmkit.train.ema import MovingAverage
from llmkit.train.optim import lr_at
from llmkit.train.options import recorded_options, unread_settings

# Hashed options a resume may change: the run's length (when it validates and saves is runtime,
# not hashed). Where the learning-rate schedule depends on the length, the steps trained under
# an earlier length are recorded in the config (SCHEDULE_HISTORY), so it still describes the run.
RESUMABLE_CHANGES = frozenset({"max_steps", "max_tokens", "epochs"})
SCHEDULE_HISTORY = "lr_schedule_before"  # (one of llmkit.train.options.STAGE_RECORDED)


def _ema_flag(decay: float | None) -> str:
    return "off" if decay is None else repr(decay)


class Resuming:
    """The resume steps of a Trainer (see the module's docstring)."""

    def _check_one_resume_point(self, latest) -> None:
        """Collective: every process resumes from the same checkpoint. A node whose -o is its own folder
        (not shared) found none, started at step 0 beside ranks at step N, and the run hung at its end."""
        if not self.info.distributed:
            return
        import os

        import torch.distributed as dist

        point = None
        if latest is not None:  # named for the message, told apart by its fingerprint (copies of a run at other steps)
            name = "its final weights" if latest == self.run_dir else latest.name
            point = (name, (artifacts._manifest_json(latest / artifacts.MANIFEST) or {}).get("fingerprint"))
        found: list = [None] * self.info.world_size
        dist.all_gather_object(found, (point, os.environ.get("GROUP_RANK", "0")))
        if len({point for point, _ in found}) > 1:
            seen = {node: f"{point[0]} ({str(point[1])[:12]})" if point else "no checkpoint" for point, node in reversed(found)}
            raise UserError(f"the nodes of this run found different checkpoints to resume from ("
                            f"{', '.join(f'node {node}: {point}' for node, point in sorted(seen.items()))}): --resume needs "
                            "-o on a filesystem every node shares")

    def _load_checkpoint_weights(self, latest: Path, progress: dict) -> None:
        from llmkit.model.io import WEIGHTS, load_weights

        if unmaterialised(self.raw):
            self._weights_file = latest / WEIGHTS  # split across ranks, each reads only its part when it is made
        elif progress.get("weights") == ckpt.TRAINABLE_ONLY:  # the rest is the base's, as the model was built
            ckpt.load_trainable_weights(self.raw, latest / WEIGHTS)
        else:
            load_weights(self.raw, latest / WEIGHTS)  # before sharding: every rank loads the full weights

    def _an_older_checkpoint(self, damaged: Path) -> str:
        """Where a damaged newest checkpoint leaves the run: the newest older one that verifies whole,
        and what to move out of the run to go on from it (a resume takes the newest; the damaged one
        was all it named)."""
        steps = [step for step in ckpt.step_dirs(self.run_dir) if step != damaged]
        newer = [damaged / artifacts.MANIFEST if damaged == self.run_dir else damaged]  # (what a resume would take first)
        if damaged != self.run_dir and self.spec.final_weights_trainable and (self.run_dir / artifacts.MANIFEST).is_file():
            try:  # (a finished run's last step damaged: its own final weights, of the same step, are what a resume takes next)
                final = ckpt.saved_step(self.run_dir) if not artifacts.verify(self.run_dir).problems else None
            except UserError:
                final = None
            if final is not None:
                return (f"; the run's own final weights (step {final}) are whole: to go on from them, move {damaged} out "
                        "of the run and --resume again")
        for step in reversed(steps):
            try:
                whole = not artifacts.verify(step).problems and ckpt.saved_step(step) >= 0
            except UserError:  # (an unreadable training state or manifest: not whole either)
                whole = False
            if whole:
                moved = " and ".join(str(path) for path in newer)
                return (f"; the run's older checkpoint {step.name} (step {ckpt.saved_step(step)}) is whole: to go on from "
                        f"it, move {moved} out of the run and --resume again")
            newer.append(step)
        return ""

    def _load_weights_for_resume(self):
        latest = ckpt.resume_point(self.run_dir, finished_run_resumable=self.spec.final_weights_trainable)
        self._check_one_resume_point(latest)
        if latest is None:
            if (self.run_dir / artifacts.MANIFEST).is_file():  # finished before its last step was kept unmerged
                raise UserError(f"{self.run_dir} holds only its merged final weights (a LoRA run made before runs kept "
                                "their last step unmerged), which cannot train on; fine-tune from it as a new base, or "
                                "start over with --force")
            if self.info.is_main:
                from llmkit.console import note

                note(f"{self.run_dir} holds no checkpoint to resume from: the run starts at step 0")
            return None
        try:
            progress, optim_state, rng, extra = ckpt.read_training_state(latest)
        except UserError as exc:
            raise UserError(f"{exc}{self._an_older_checkpoint(latest)}") from None
        self._saved_ema = MovingAverage.from_saved(extra)
        self._saved_best = (BestWeights.from_saved(extra), progress.get("best"))
        self.stall = ValidationStall.from_progress(progress.get("validation_stall"), self.run_dir / METRICS,
                                                   int(progress["step"]))
        self._check_same_run(latest, progress)
        for key, now in (("global_batch", self.settings.global_batch), ("tokens_per_sample", self.settings.tokens_per_sample)):
            if progress.get(key) != now:
                raise UserError(
                    f"cannot resume from {latest}: it was trained with {key} {progress.get(key)}, this run asks for {now}; "
                    "resume with the same --batch-tokens and --seq-len, or start a new run"
                )
        try:  # (after the checks that the checkpoint is this run's: another shape is their refusal, not a damaged file)
            self._load_checkpoint_weights(latest, progress)
        except UserError as exc:
            raise UserError(f"{exc}{self._an_older_checkpoint(latest)}") from None
        self.start_step = int(progress["step"])
        # counted again, not read: a checkpoint written before the count was each example's own
        # holds --seq-len a sample (the batches are a pure function of the step: no messages)
        self.tokens_seen = sum(self.step_tokens(step) for step in range(self.start_step))
        if self.start_step > self.settings.max_steps:
            raise UserError(
                f"cannot resume from {latest}: it has trained {self.start_step} steps, more than this run's "
                f"{self.settings.max_steps}; give {self.settings.longer.format(step=self.start_step)} to train further"
            )
        self._record_schedule_history(latest, progress)
        self.last_loss = progress.get("loss")
        self.last_val = progress.get("val_loss")
        self.last_val_step = progress.get("val_step")
        self.last_val_scores = dict(progress.get("val_scores") or {})
        self.resumed_from = self.start_step
        self._resume_progress = progress
        self.seconds_before = float(progress.get("seconds") or 0.0)
        return optim_state, rng, latest

    def _record_schedule_history(self, latest: Path, progress: dict[str, Any]) -> None:
        """A longer (or shorter) run resumed: where its learning rates so far were those of another
        length (cosine and linear decay over --max-steps, the default warmup a tenth of it), the
        config records those steps' schedule, so that it is not the config of a run that trained
        all its steps on this one (whose weights, and fingerprint, differ)."""
        s = self.settings
        history = list(artifacts.load(latest, kind="checkpoint").config.get(SCHEDULE_HISTORY, []))
        before = progress.get("schedule") or {}
        if before and before.get("max_steps") != s.max_steps:
            def rate(settings: dict[str, Any], step: int) -> float:
                return lr_at(step, lr=s.lr, warmup_steps=settings["warmup_steps"], max_steps=settings["max_steps"],
                             schedule=s.optim.schedule, min_lr_ratio=s.optim.min_lr_ratio)

            now = {"warmup_steps": s.warmup_steps, "max_steps": s.max_steps}
            if any(rate(before, step) != rate(now, step) for step in range(self.start_step)):
                history.append({"until_step": self.start_step, "max_steps": before["max_steps"],
                                "warmup_steps": before["warmup_steps"]})
                ends_here = self.stall.first_stop(s.checkpoints) is not None  # (--patience ends it at once: nothing trains at that rate)
                if self.info.is_main and self.start_step > 0 and not ends_here:  # (a decayed rate rising again is worth a word)
                    from llmkit.console import note

                    note(f"the learning-rate schedule now spans {s.max_steps} steps, not {before['max_steps']}: step "
                         f"{self.start_step + 1} trains at {rate(now, self.start_step):.3g}, where step {self.start_step} "
                         f"trained at {rate(before, self.start_step - 1):.3g}")
        if history:
            self.spec.config[SCHEDULE_HISTORY] = history

    def _check_same_run(self, latest: Path, progress: dict[str, Any]) -> None:
        """A resume continues the same run: same model, seed and inputs (the data order depends on
        them), options and moving average."""
        from llmkit.model.io import read_model_config

        manifest = artifacts.load(latest, kind="checkpoint").manifest
        self._saved_runtime = manifest.runtime  # (how the saved run drew dropout masks: _restore_optimizer_and_rng)
        changed = []  # the inputs first: a model flag left out with --init-from follows from them
        saved_inputs = {i["role"]: i["fingerprint"] for i in manifest.inputs}
        given = {role: art.fingerprint for role, art in self.spec.inputs}
        for role in sorted(set(saved_inputs) | set(given)):
            if role not in given:
                changed.append(f"{role} input {saved_inputs[role][:12]} dropped")
            elif role not in saved_inputs:
                changed.append(f"{role} input {given[role][:12]} added")
            elif saved_inputs[role] != given[role]:
                changed.append(f"{role} input {saved_inputs[role][:12]} -> {given[role][:12]}")
        from llmkit.model.presets import TRANSFORMER_ONLY

        saved = read_model_config(latest).to_dict()
        now = self.raw.config.to_dict()
        # (an LSTM's Transformer fields are none of its network; one begun before 2026-12-05 from a
        # Transformer preset recorded that preset's)
        unused = TRANSFORMER_ONLY if now.get("arch") == "lstm" else ("rope_theta",) if now.get("pos") == "learned" else ()
        changed += [f"{k} {saved.get(k)!r} -> {now.get(k)!r}" for k in now if k not in unused and saved.get(k) != now.get(k)]
        if "rope_theta" in unused and "rope_theta" in saved:  # (a learned-position run's, unread: its record kept, as below)
            self.raw.config.rope_theta = saved["rope_theta"]
        if manifest.seed != self.spec.seed:
            changed.append(f"seed {manifest.seed} -> {self.spec.seed}")
        # What a run may change on resume: its length, and when it validates and saves. Anything
        # else would leave a config that describes no run (its first steps trained otherwise).
        saved_options, options = recorded_options(manifest.config), recorded_options(self.spec.config)
        unset, unset_before = self.spec.defaults(options), self.spec.defaults(saved_options)
        if (progress.get("schedule") or {}).get("warmup_steps") is not None and "warmup_steps" in unset:
            # (the default warmup follows the run's length, which a resume may change: the saved run's is its own)
            unset_before["warmup_steps"] = progress["schedule"]["warmup_steps"]
        # a setting neither run reads, which one made before 2026-12-05 may hold (`--momentum 0.5` under AdamW,
        # refused since), can no longer be given again: the saved record stays, as for the defaults below
        pos = self.raw.config.to_dict().get("pos")
        unread = unread_settings({**saved_options, "pos": pos}) & unread_settings({**options, "pos": pos})
        for key in sorted(set(saved_options) | set(options)):
            before, now = saved_options.get(key), options.get(key)
            if key in RESUMABLE_CHANGES or before == now or key == "seed":  # (the seed: named above)
                continue
            if key in unread and key in saved_options:
                self.spec.config[key] = before
                continue
            if key == "model" and now is None and any(ref.get("role") == "init" for ref in manifest.inputs):
                # an --init-from run made before 2026-12-06 recorded --model's default, which it may not be given
                # again: the saved record stays (the model is the init checkpoint's either way)
                self.spec.config[key] = before
                continue
            if key in unset and now is None and before == unset[key]:
                # The saved record stays: the run is then the one an uninterrupted run would have made.
                self.spec.config[key] = before
                continue
            if key in unset and before is None and now in (unset_before[key], unset[key]):
                # (the saved run's default typed, or this run's, which leaving it out gives: the same run; and
                # stays unset where it means that value now, typed where this run's default is another)
                self.spec.config[key] = None if unset[key] == now else now
                continue
            if key.endswith("_sha256"):  # an input recorded by content: no option to name
                changed.append(f"the {key.removesuffix('_sha256').replace('_', ' ')}'s content changed")
                continue
            shown_now = f"default ({unset[key]})" if now is None and key in unset else repr(now)
            shown_before = f"default ({unset_before[key]})" if before is None and key in unset else repr(before)
            changed.append(f"--{key.replace('_', '-')} {shown_before} -> {shown_now}")
        # The examples as encoded (fine-tuning's, runtime["examples_sha256"]): the same data and options
        # are other examples where an llmkit version encodes them otherwise (--truncate's cut changed on
        # 2026-12-05), and the resumed steps then trained on another data order without a word.
        saved_examples, examples = self._saved_runtime.get("examples_sha256"), self.spec.runtime.get("examples_sha256")
        # (only where nothing else explains it: a changed option or file makes other examples by itself)
        if examples and saved_examples != examples and (saved_examples or options.get("truncate")) and not changed:
            changed.append("the training examples as encoded (this llmkit version encodes the data otherwise than the "
                           "one that saved the run)")
        windows = self.spec.runtime.get("windows")  # (pretraining's: how its text is cut into windows)
        if windows is not None and self._saved_runtime.get("windows") != windows:  # (no option brings them back)
            raise UserError(f"cannot resume from {latest}: it trained on windows of the text that this llmkit version "
                            "cuts otherwise (a run saved by an earlier version); start a new run, or train on from its weights "
                            f"in a new one with --init-from {latest}")
        # --ema is outside the config (RUN/ema's records it), yet the average goes on from the saved
        # one: another decay, or none, would leave a RUN/ema no run made (or a stale one in the run).
        ema = self.settings.checkpoints.ema
        if "ema" in progress:
            if progress["ema"] != ema:
                changed.append(f"--ema {_ema_flag(progress['ema'])} -> {_ema_flag(ema)}")
        elif bool(self._saved_ema) != (ema is not None):  # saved before the decay was: only whether there was one
            changed.append(f"--ema {'on' if self._saved_ema else 'off'} -> {_ema_flag(ema)}")
        # --keep-best likewise: the best of the whole run, which the saved state holds only if it was kept
        keep_best = self.settings.checkpoints.keep_best
        if bool(progress.get("keep_best")) != keep_best:
            changed.append(f"--{'no-' if keep_best else ''}keep-best -> --{'' if keep_best else 'no-'}keep-best")
        if changed:
            raise UserError(
                f"cannot resume from {latest}: this run differs from it ({'; '.join(changed[:3])}); "
                "resume with the same options (only the length, how often it validates and saves may change), seed and "
                "inputs, or start a new run with another -o"
            )

    def _restore_optimizer_and_rng(self, optim_state, rng, latest) -> None:
        self.engine.load_optimizer_state(self.optimizer, optim_state)
        same_world = ckpt.restore_rng(rng, self.info.rank, self.info.world_size, self.device)
        # Per-sequence dropout masks are seeded by the step and position, so they continue whatever
        # the layout, when the saved run drew them that way too; per-process streams continue only
        # in the same number of processes.
        saved_per_sequence = bool(self._saved_runtime.get("batch_invariant"))
        per_sequence = bool(getattr(self.engine, "batch_invariant", False))
        continues = per_sequence and saved_per_sequence or not per_sequence and not saved_per_sequence and same_world
        if not continues and getattr(self.raw.config, "dropout", 0) > 0 and self.info.is_main:
            from llmkit.console import note

            note(f"{latest.name} was written by {self._resume_progress.get('world_size')} process(es) drawing dropout "
                 f"masks {'per sequence' if saved_per_sequence else 'per process'}, this run has {self.info.world_size} "
                 f"drawing them {'per sequence' if per_sequence else 'per process'}: weights, optimizer and data position "
                 "carry over exactly; the dropout masks from here on differ from the saved run's")
        # --precision auto is the same option on a GPU (bf16) and a CPU (fp32): the same config,
        # other arithmetic from here on, which a resume moved between devices is told.
        saved_precision = self._saved_runtime.get("precision")
        if saved_precision and saved_precision != self.precision and self.info.is_main:
            from llmkit.console import note

            note(f"{latest.name} computed in {saved_precision} on {self._saved_runtime.get('device', 'another device')}, "
                 f"this run computes in {self.precision} on {self.device} (--precision {self.settings.numerics.precision}): "
                 "weights and optimizer carry over exactly; the products from here on round otherwise")
