"""`llmkit sweep`: run the grid as ordinary pretraining runs, then make the sweep artifact.

    sweep(tokens, out, SweepConfig.build(flops=[1e12, 4e12])) -> out

OUT/runs/NAME is each run (an `llmkit pretrain` run directory, then a checkpoint artifact),
started as `llmkit pretrain TOKENS -o OUT/runs/NAME --config OUT/configs/NAME.yaml` with its
output in OUT/logs/NAME.log. Rerunning the same sweep skips the runs that finished with the
planned options and resumes interrupted ones (`--resume`). At the end OUT becomes a `sweep`
artifact: its inputs are the tokens and every run (by fingerprint); runs.json, a hashed file,
the table of runs that `llmkit scaling fit` reads (parameters, tokens, FLOPs, losses, bits per
byte), so `llmkit verify` catches an edited result; its stats the same table with each run's wall
time; and plots/ one loss-curve figure per budget.
"""

from __future__ import annotations

import json
import math
import os
import shutil
import signal
import subprocess
import sys
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from llmkit import artifacts
from llmkit.errors import Terminated, UsageError, UserError, debug_enabled
from llmkit.runtime import END_WITH_PARENT
from llmkit.train.options import recorded_options
from llmkit.sweep.config import SweepConfig, one_grid
from llmkit.sweep.grid import PlannedRun, budget_label, legacy_name, plan, too_few_for_a_fit
from llmkit.sweep_table import GRID_OPTIONS, TABLE, above_a_uniform_guess, write_table  # (the table of finished runs, hashed; stats add each run's wall time)

RUNS, CONFIGS, LOGS, PLOTS = artifacts.SWEEP_RUNS, "configs", "logs", "plots"


@dataclass
class RunState:
    run: PlannedRun
    state: str = "queued"  # queued | running | done | failed | skipped (already done)
    process: subprocess.Popen | None = None
    started: float = 0.0
    seconds: float | None = None
    error: str | None = None
    slot: int | None = None  # the GPU (or CPU slot) it runs on
    log_start: int = 0  # where this attempt's lines begin in its log (earlier attempts' come before)


def sweep(tokens: Path | str, out: Path | str, config: SweepConfig, *, force: bool = False) -> Path:
    """Run (or finish) every run of the grid and write the sweep artifact; returns `out`."""
    from llmkit.train.launch import run_directory

    from llmkit.charts import require_matplotlib

    require_matplotlib()  # (the plots come last: without it, every run trained and then the sweep failed)
    tokens_art = artifacts.load(tokens, kind="tokens")
    out = Path(out)
    _check_runs_can_finish(tokens_art, config)
    runs = plan(config, int(tokens_art.stats["vocab_size"]))
    _check_models_read_their_settings(runs, int(tokens_art.stats["vocab_size"]))
    with run_directory(out, resume=not force, force=force, inputs=[tokens_art.path], kind="sweep"):
        if not force:  # each refuses before anything changes on disk
            _rename_legacy_runs(out, runs)
            _same_sweep(out, config, runs, tokens_art)
        finished = [_finished_with_these_options(run, out, tokens_art, _sweep_config(config)) for run in runs]
        (out / CONFIGS).mkdir(parents=True, exist_ok=True)  # (what a rerun that differs is told it differs in)
        (out / CONFIGS / SWEEP_OPTIONS).write_text(artifacts.canonical_json(_sweep_config(config)) + "\n", encoding="utf-8")
        if not all(finished):  # a sweep being (re)run is not an artifact until it is finished again
            (out / artifacts.MANIFEST).unlink(missing_ok=True)
        (out / FINISHED_POINTS).unlink(missing_ok=True)  # (a failed attempt's: this one says again what finished)
        states = [_prepare(run, out, done) for run, done in zip(runs, finished)]
        if not all(finished):  # (after every check, before training)
            from llmkit.console import note

            for said in (too_few_for_a_fit(runs), past_one_epoch(runs, tokens_art)):
                if said is not None:
                    note(said)
        try:
            _execute(states, tokens_art.path, out, config)
        except KeyboardInterrupt as stop:  # (a failed sweep wrote its finished runs as points; a stopped one did not)
            fit = _finished_points_said(states, out, int(tokens_art.stats["vocab_size"]))
            if fit:
                from llmkit.errors import add_advice

                add_advice(stop, rerun_advice(force) + fit)
            raise
        failed = [s for s in states if s.state == "failed"]
        if failed:
            kept = any((out / RUNS / s.run.name).exists() for s in states)  # else the whole folder goes, logs too
            if debug_enabled():  # the run's own traceback (its --debug), which goes with its log where nothing is kept
                from llmkit.console import err

                err.print(f"--- {failed[0].run.name}'s log:\n{_attempt_log(out / LOGS / (failed[0].run.name + '.log'), failed[0].log_start)}",
                          markup=False, highlight=False, soft_wrap=True)
            fit = _finished_points_said(states, out, int(tokens_art.stats["vocab_size"]))
            raise UserError(f"{len(failed)} of {len(states)} runs failed ({failed[0].run.name}: {failed[0].error})"
                            + (f"; its log is {out / LOGS / (failed[0].run.name + '.log')}; fix the cause, then rerun the "
                               "same command: finished runs are kept (a fix in the sweep's own options, such as --lr, "
                               "needs --force or another -o: the finished runs were trained with the old ones)" + fit if kept
                               else "; fix the cause and rerun"))
        _finish(states, tokens_art, out, config)
    return out


def rerun_advice(force: bool) -> str:
    """What rerunning a stopped sweep does (`force`: it was started with --force)."""
    if force:  # (past its first checkpoint the old sweep is gone: the new one's runs are kept)
        return ("rerun it without --force to go on from the runs the new sweep kept (none before a run's first "
                "checkpoint), or as it was to start again")
    return "rerun the same command to continue: the finished runs are kept"


FINISHED_POINTS = "finished_points.csv"  # a failed sweep's finished runs, as points `scaling fit` reads


def _finished_points_said(states: list[RunState], out: Path, vocab_size: int) -> str:
    """What a failed sweep's message says of the runs that finished (`_finished_rows`): the
    fit of them where they are enough for one, less those that diverged, which a CSV's fit cannot
    tell (they are named, and left out of the points)."""
    from llmkit.console import shell_word
    from llmkit.sweep_table import diverged_runs

    finished = _finished_rows(states, out)
    if not finished:
        return ""
    diverged = above_a_uniform_guess([(row[0], row[4]) for row in finished], vocab_size)
    left_out = set(diverged_runs([(row[0], row[4]) for row in finished], vocab_size))
    rows = [row for row in finished if row[0] not in left_out]
    _write_points(rows, out / FINISHED_POINTS)
    said = f" ({len(finished)} run{'s' if len(finished) != 1 else ''} finished"
    said += f"; {diverged}, left out of the points" if diverged else ""
    if not rows:
        return said + ")"
    said += f"; {len(rows)} written as points to {out / FINISHED_POINTS}"
    sizes, tokens = len({row[1] for row in rows}), len({row[2] for row in rows})
    if len(rows) >= 6 and sizes >= 2 and tokens >= 2:
        return said + f"; llmkit scaling fit {shell_word(out / FINISHED_POINTS)} -o FIT fits them)"
    return said + ": too few for a fit, which needs 6 points or more of 2 sizes and 2 token counts or more)"


def _finished_rows(states: list[RunState], out: Path) -> list[list]:
    """The runs that finished with a validation loss, as points (name, params: non-embedding as the
    fit counts them by default, tokens seen, budget, loss): a sweep that cannot finish (a run
    diverged to NaN at its --lr) still gives a fit of the others."""
    from llmkit.model.records import CheckpointStats

    rows = []
    for state in states:
        if state.state not in ("done", "skipped") or artifacts.manifest_kind(out / RUNS / state.run.name) != "checkpoint":
            continue
        stats = CheckpointStats.of(artifacts.load(out / RUNS / state.run.name, kind="checkpoint"))
        if stats.val_loss is not None:
            rows.append([state.run.name, state.run.non_embedding_params, stats.tokens_seen or state.run.tokens,
                         state.run.flops_budget or "", stats.val_loss])
    return rows


def _write_points(rows: list[list], path: Path) -> None:
    """Points as the CSV `scaling fit` reads (none: no file)."""
    import csv

    if rows:
        with open(path, "w", encoding="utf-8", newline="") as handle:
            writer = csv.writer(handle)
            writer.writerow(["name", "params", "tokens", "budget", "loss"])
            writer.writerows(rows)


def past_one_epoch(runs: list[PlannedRun], tokens_art: artifacts.Artifact) -> str | None:
    """The runs that would read the training split more than once, said before training: the fit
    takes each run's tokens as data seen, and a token seen again is worth less than a new one."""
    train = int((tokens_art.stats.get("train") or {}).get("tokens") or 0)
    repeated = [run for run in runs if train and run.tokens > train]
    if not repeated:
        return None
    most = max(repeated, key=lambda run: run.tokens)
    return (f"{len(repeated)} of {len(runs)} runs train past one epoch of {tokens_art.path}'s training split ({train:,} "
            f"tokens; {most.name} reads it {most.tokens / train:.1f} times): the fit takes their tokens as data seen, and "
            "tokens seen again are worth less than new ones (Muennighoff et al., 2023); give more text, or smaller budgets")


def _check_runs_can_finish(tokens_art: artifacts.Artifact, config: SweepConfig) -> None:
    """Refused before anything trains: runs that cannot record the validation loss the fit reads,
    and a run split over several GPUs or processes (the sweep runs one per GPU or share of the CPU
    cores, several at once)."""
    devices = config.base.devices
    if devices.tensorboard:  # (each run would start, then fail)
        from llmkit.train.metrics import summary_writer_class

        summary_writer_class()
    if devices.tp > 1 or devices.pp > 1:
        raise UsageError("--tp/--pp split one run over several processes, and a sweep trains one run per GPU (or share of the "
                         "CPU cores); leave them out")
    if devices.nproc > 1:
        # (a sweep's smallest runs take one sequence a step, which does not split between processes)
        raise UsageError(f"--nproc {devices.nproc} splits one run over several processes, and a sweep trains each run in one; "
                         "use --parallel N to train N runs at once (the CPU cores are split between them)")
    if (devices.gpus or 0) > 1:
        raise UsageError(f"--gpus {devices.gpus}: a sweep trains one run per GPU, several at once; leave --gpus out "
                         "(or 1), and choose the GPUs it takes with CUDA_VISIBLE_DEVICES")
    if config.base.checkpoints.patience:
        also = " (and --min-delta, which only qualifies it)" if config.base.checkpoints.min_delta else ""
        raise UsageError(f"--patience {config.base.checkpoints.patience} would end some runs before their budget, and the "
                         f"scaling fit compares each run at its budget; leave --patience out{also}")
    if not config.base.checkpoints.eval_every:
        raise UsageError("--eval-every 0 leaves the runs without the validation loss the scaling fit reads; leave --eval-every "
                         "on (the runs validate at their end whatever its value)")
    if not (tokens_art.stats.get("val") or {}).get("tokens"):
        raise UserError(f"{tokens_art.path} has no validation split, and the scaling fit reads each run's validation loss; "
                        "tokenize again with --val-fraction above 0")


def _check_models_read_their_settings(runs: list, vocab_size: int) -> None:
    """Refused before any run starts (each started, then failed: `--model gpt2-tiny --rope-theta 500`)."""
    from llmkit.model.presets import resolve_model_config
    from llmkit.train.options import refuse_unread_model_settings

    first = runs[0].config
    model = resolve_model_config(first.architecture.model, vocab_size=vocab_size, overrides=first.architecture.overrides())
    refuse_unread_model_settings(first, model)
    if first.document_mask and model.arch == "lstm":  # (pretrain's own check, before the runs: each started, then failed)
        raise UserError("--document-mask masks attention, which an LSTM has none of; leave it out")


def _rename_legacy_runs(out: Path, runs: list[PlannedRun]) -> None:
    """Runs of a sweep started before budgets were named in enough digits ("c2e08-..." for 2.5e8)
    take their names of today, where that is unambiguous, so that the sweep goes on."""
    legacy: dict[str, list[PlannedRun]] = {}
    for run in runs:
        if legacy_name(run) != run.name:
            legacy.setdefault(legacy_name(run), []).append(run)
    for old, [run, *others] in legacy.items():
        if others or not (out / RUNS / old).is_dir() or (out / RUNS / run.name).exists():
            continue  # two budgets shared that name (which of them is it?), or nothing to rename
        os.replace(out / RUNS / old, out / RUNS / run.name)
        for folder, suffix in ((LOGS, ".log"), (CONFIGS, ".yaml")):
            if (out / folder / f"{old}{suffix}").is_file():
                os.replace(out / folder / f"{old}{suffix}", out / folder / f"{run.name}{suffix}")


def _tokens_of(art: artifacts.Artifact) -> str | None:
    return next((ref["fingerprint"] for ref in art.manifest.inputs if ref["role"] == "tokens"), None)


def _without_grid(config: dict[str, Any]) -> dict[str, Any]:
    return recorded_options({key: value for key, value in config.items() if key not in GRID_OPTIONS and key != "validation"})


def _same_sweep(out: Path, config: SweepConfig, runs: list[PlannedRun], tokens_art: artifacts.Artifact) -> None:
    """A rerun continues the very sweep in OUT: a finished sweep of other options or other tokens, or
    runs this grid does not plan, are refused (they would be replaced, or left lying in the artifact)."""
    if (out / artifacts.MANIFEST).is_file():
        finished = artifacts.load(out, kind="sweep", check=False)
        if _tokens_of(finished) != tokens_art.fingerprint:
            raise UserError(f"{out} is a finished sweep on other tokens than {tokens_art.path}; pass --force to replace it, "
                            "or write this one to another -o")
        recorded, now = one_grid(finished.config), _sweep_config(config)
        validation = recorded.get("validation") or {key: recorded.get(key) for key in now["validation"]}  # (before 2026-12-02)
        if recorded_options({**recorded, "validation": None}) != recorded_options({**now, "validation": None}) or \
                validation != now["validation"]:
            differ = option_changes({**recorded_options({**recorded, "validation": None}), **validation},
                                    {**recorded_options({**now, "validation": None}), **now["validation"]})
            grid_only = all(_without_grid(recorded).get(key) == _without_grid(now).get(key)
                            for key in set(recorded) | set(now)) and validation == now["validation"]
            extend = (f"; to add to its grid, sweep the new sizes or budgets to another -o and fit both: llmkit scaling fit "
                      f"{out} NEW -o FIT" if grid_only else "")
            raise UserError(f"{out} is a finished sweep of another grid or other options ({'; '.join(differ)}); pass "
                            f"--force to replace it, or write this one to another -o{extend}")
    planned = {run.name for run in runs}
    # (a run killed outright leaves its lock file, .NAME.lock, behind: not a run)
    strays = sorted(p.name for p in (out / RUNS).iterdir()
                    if p.is_dir() and not p.name.startswith(".") and p.name not in planned) if (out / RUNS).is_dir() else []
    if strays:
        raise UserError(f"{out / RUNS} holds runs this sweep does not plan ({', '.join(strays[:3])}"
                        f"{', ...' if len(strays) > 3 else ''}): another grid was started there; pass --force to start "
                        "over, or write this sweep to another -o")


def option_changes(before: dict[str, Any], now: dict[str, Any], shown_at_most: int = 3) -> list[str]:
    """Each option that differs as typed on a command line (`--lr 0.001 -> 0.002`, `--tie-embeddings ->
    --no-tie-embeddings`, a default as such), by its declared flag; past `shown_at_most`, how many more."""
    from llmkit.options import flat_options

    flags = {opt.name: opt for opt in flat_options(SweepConfig)}
    missing = object()

    def shown(value: Any) -> str:
        if value is missing:
            return "(not recorded)"
        if value is None:
            return "(default)"
        if isinstance(value, list):
            return ",".join(map(shown, value)) or "''"
        if isinstance(value, float):  # (a budget as typed, 2e+09, not 2000000000.0; repr where :g would round)
            return f"{value:g}" if float(f"{value:g}") == value else repr(value)
        return value if isinstance(value, str) else json.dumps(value)

    changes = []
    for key in sorted(set(before) | set(now)):
        was, is_ = before.get(key, missing), now.get(key, missing)
        if was == is_ or key == "validation":
            continue
        opt = flags.get(key)
        flag = opt.flag if opt is not None else f"--{key.replace('_', '-')}"
        switch = opt is not None and any("/" in f for f in opt.spec.flags)  # (--x/--no-x)
        if switch and isinstance(was, bool | None) and isinstance(is_, bool | None) and was is not missing and is_ is not missing:
            on = lambda value: flag if value else "--no-" + flag[2:]  # noqa: E731
            changes.append(f"{on(was) if was is not None else flag + ' (default)'} -> {on(is_) if is_ is not None else '(default)'}")
        else:
            changes.append(f"{flag} {shown(was)} -> {shown(is_)}")
    if len(changes) > shown_at_most:
        changes = changes[:shown_at_most] + [f"and {len(changes) - shown_at_most} more"]
    return changes


def _flat_sweep_options(options: dict[str, Any]) -> dict[str, Any]:
    """A sweep's recorded options with how its runs validate among them, as `option_changes` names them."""
    return {**recorded_options({**options, "validation": None}), **(options.get("validation") or {})}


def _validation(config) -> dict[str, int]:
    """How the runs validate: the sweep's result (the validation losses the fit uses) depends on it,
    although for one run it is runtime (it changes no weight)."""
    base = getattr(config, "base", config)
    return {"eval_every": base.checkpoints.eval_every, "eval_tokens": base.eval_tokens}


def _sweep_config(config: SweepConfig) -> dict:
    """The sweep artifact's hashed config: its options, and how its runs validate."""
    return json.loads(artifacts.canonical_json({**config.hashed(), "validation": _validation(config)}))


SWEEP_OPTIONS = "sweep.json"  # in OUT/configs: the sweep's own options, as its manifest will record them


def _finished_with_these_options(run: PlannedRun, out: Path, tokens_art: artifacts.Artifact, sweep_options: dict) -> bool:
    """Whether the run is already done; one done, or interrupted after a checkpoint, with other
    options or on other tokens is refused (a sweep rerun with another --lr, say), before the sweep
    changes anything on disk: else the other runs would train with the new options first, and the
    interrupted one's pretrain --resume refuse them after."""
    from llmkit.train.checkpoint import latest_checkpoint

    target = out / RUNS / run.name
    finished = (target / artifacts.MANIFEST).is_file()
    saved = target if finished else latest_checkpoint(target)
    if saved is None:
        return False
    done = artifacts.load(saved, kind="checkpoint")
    trained = "was trained" if finished else f"was interrupted ({saved.name} saved) after training"
    if _tokens_of(done) is None:  # (another stage's artifact put there: a soup, an import)
        raise UserError(f"{target} is no pretraining run (nothing in it was trained on tokens): something else was written "
                        "there; rerun with --force to start the sweep over, or write it to another -o")
    if _tokens_of(done) != tokens_art.fingerprint:
        raise UserError(f"{target} {trained} on other tokens than {tokens_art.path}; rerun with --force to start the sweep "
                        "over, or write it to another -o")
    validated = {key: done.manifest.runtime.get(key, done.config.get(key)) for key in _validation(run.config)}  # (config: before 2026-12-02)
    before, now = recorded_options(done.config), json.loads(artifacts.canonical_json(run.config.hashed()))
    if not finished:  # (an interrupted run may validate otherwise when resumed)
        validated = _validation(run.config)
    if before != now or validated != _validation(run.config):
        # (the sweep's options as typed, where its start recorded them: a run's own are derived, its --lr scaled by width)
        try:
            recorded = json.loads((out / CONFIGS / SWEEP_OPTIONS).read_text(encoding="utf-8"))
        except (OSError, ValueError):
            recorded = None
        differ = (option_changes(_flat_sweep_options(recorded), _flat_sweep_options(sweep_options))
                  if isinstance(recorded, dict) else [])
        differ = differ or ["the run's " + "; ".join(option_changes({**before, **validated}, {**now, **_validation(run.config)}))]
        raise UserError(f"{target} {trained} with other options than this sweep plans ({'; '.join(differ)}); "
                        "rerun with the options it was started with, with --force to start the sweep over, or write it to "
                        "another -o")
    return finished


def _prepare(run: PlannedRun, out: Path, done: bool) -> RunState:
    """A run's options on disk (the config file its pretrain command reads), and its state."""
    import yaml

    for folder in (RUNS, CONFIGS, LOGS):
        (out / folder).mkdir(parents=True, exist_ok=True)
    (out / CONFIGS / f"{run.name}.yaml").write_text(yaml.safe_dump({"pretrain": run.config.flat()}, sort_keys=True), encoding="utf-8")
    return RunState(run, state="skipped" if done else "queued")


def _command(state: RunState, tokens: Path, out: Path, threads: int) -> list[str]:
    target = out / RUNS / state.run.name
    command = [sys.executable, "-m", "llmkit.cli", *(["--debug"] if debug_enabled() else []), "pretrain", str(tokens),
               "-o", str(target), "--config", str(out / CONFIGS / f"{state.run.name}.yaml"), "--threads", str(threads)]
    if target.exists():
        command.append("--resume")  # an interrupted run goes on from its newest checkpoint
    return command


def _execute(states: list[RunState], tokens: Path, out: Path, config: SweepConfig) -> None:
    """Run the queued runs, `parallel` at a time (one per GPU when there are GPUs), showing a live table."""
    import torch

    from llmkit.runtime import omp_thread_limit, worker_count

    gpus = gpu_slots(torch.cuda.device_count() if torch.cuda.is_available() else 0, config.base.devices.gpus)
    slots = len(gpus) or config.parallel
    # --threads caps each run (a shared machine); by default the cores are split between the runs at once
    threads = config.base.devices.threads or (max(1, worker_count(0) // slots) if not gpus else 0)
    if not config.base.devices.threads and threads and (limit := omp_thread_limit()):
        threads = min(threads, limit)  # (each run refuses more: what OpenMP would cut short)
    queue = [s for s in states if s.state == "queued"]
    free = list(range(slots))
    running: list[RunState] = []
    view = _ProgressView(states, out)
    try:
        with view:
            view.update()  # runs already done show at once
            while queue or running:
                while queue and free:
                    state = queue.pop(0)
                    slot = free.pop(0)
                    env = dict(os.environ, CUDA_VISIBLE_DEVICES=gpus[slot]) if gpus else dict(os.environ)
                    env[END_WITH_PARENT] = str(os.getpid())  # a killed sweep takes its runs with it (runtime.end_with_parent)
                    log = open(out / LOGS / f"{state.run.name}.log", "a", encoding="utf-8")
                    state.log_start = log.tell()
                    # In a session of its own: a terminal's Ctrl-C reaches this process alone, which passes it on
                    # once (below), as it does a SIGINT sent to it alone (`kill -INT`, a supervisor).
                    state.process = subprocess.Popen(_command(state, tokens, out, threads), stdout=log, stderr=subprocess.STDOUT,
                                                     env=env, start_new_session=True)
                    log.close()
                    state.state, state.started, state.slot = "running", time.perf_counter(), slot
                    running.append(state)
                for state in list(running):
                    code = state.process.poll()
                    if code is None:
                        continue
                    state.seconds = time.perf_counter() - state.started
                    state.state = "done" if code == 0 else "failed"
                    if code:
                        state.error = _last_error(out / LOGS / f"{state.run.name}.log", code, state.log_start)
                    running.remove(state)
                    free.append(state.slot)
                view.update()
                if queue or running:
                    time.sleep(0.5)
    except KeyboardInterrupt as stop:
        for state in running:  # each run stops as this process was asked to, then is waited for (it saves nothing half-written)
            state.process.send_signal(signal.SIGTERM if isinstance(stop, Terminated) else signal.SIGINT)
        for state in running:
            state.process.wait()
        raise


def gpu_slots(visible: int, asked: int | None, mask: str | None = None) -> list[str]:
    """The device each GPU slot's run sees (its CUDA_VISIBLE_DEVICES): one run per GPU this process
    may use, named as the user's own CUDA_VISIBLE_DEVICES names them (the sweep's slot 1 under
    CUDA_VISIBLE_DEVICES=4,5 is GPU 5, not GPU 1)."""
    if asked == 0 or not visible:
        return []
    mask = os.environ.get("CUDA_VISIBLE_DEVICES") if mask is None else mask
    names = [name.strip() for name in mask.split(",") if name.strip()] if mask else []
    return names[:visible] if len(names) >= visible else [str(index) for index in range(visible)]


def _attempt_log(log: Path, start: int = 0) -> str:
    """What one attempt of a run wrote to its log (a rerun appends to it)."""
    with open(log, "rb") as file:
        file.seek(start)
        return file.read().decode("utf-8", errors="replace")


def _last_error(log: Path, code: int, start: int = 0) -> str:
    lines = [line for line in _attempt_log(log, start).splitlines() if line.startswith("error:")]
    if lines:
        return lines[-1][len("error:"):].strip()
    if code < 0:  # killed from outside before it could say anything: the signal is the whole story
        import signal

        try:
            name = signal.Signals(-code).name
        except ValueError:
            name = f"signal {-code}"
        return f"killed by {name}" + (" (out of memory?)" if -code == signal.SIGKILL else "") + "; see the log"
    return "no error line; see the log"


class _ProgressView:
    """A live table of the runs on a terminal; a line per finished run otherwise."""

    def __init__(self, states: list[RunState], out: Path):
        from llmkit.console import err

        self.states, self.out, self.console = states, out, err
        self.live = None
        self.reported: set[str] = set()

    def __enter__(self):
        if self.console.is_terminal:
            from rich.live import Live

            self.live = Live(self._table(), console=self.console, refresh_per_second=2)
            self.live.__enter__()
        return self

    def __exit__(self, *exc):
        if self.live is not None:
            self.live.update(self._table())
            self.live.__exit__(*exc)

    def update(self) -> None:
        if self.live is not None:
            self.live.update(self._table())
            return
        for state in self.states:
            if state.state in ("done", "failed", "skipped") and state.run.name not in self.reported:
                self.reported.add(state.run.name)
                detail = f" in {state.seconds:.0f} s" if state.seconds else ""
                self.console.print(f"sweep: {state.run.name} {state.state}{detail}" + (f": {state.error}" if state.error else ""),
                                   soft_wrap=True, markup=False)

    def _table(self):
        from rich.table import Table

        table = Table(title=f"sweep {self.out}", title_justify="left")
        for column in ("run", "params (non-emb.)", "tokens", "state", "step", "loss", "val loss"):
            table.add_column(column, justify="left" if column in ("run", "state") else "right")
        for state in self.states:
            last = _last_metrics(self.out / RUNS / state.run.name)
            table.add_row(
                state.run.name, f"{state.run.non_embedding_params:,}", f"{state.run.tokens:,}", state.state,
                str(last.get("step", "")), _number(last.get("loss")), _number(last.get("val_loss")),
            )
        return table


def _number(value: Any) -> str:
    return f"{value:.4f}" if isinstance(value, (int, float)) else ""


def _last_metrics(run: Path) -> dict[str, Any]:
    path = run / "metrics.jsonl"
    if not path.is_file():
        return {}
    last: dict[str, Any] = {}
    for line in path.read_text(encoding="utf-8").splitlines()[-50:]:
        try:
            record = json.loads(line)
        except json.JSONDecodeError:
            continue
        last.update({k: v for k, v in record.items() if k != "val_ppl"})
    return last


def _val_losses(run: Path) -> list[float]:
    from llmkit.charts import read_metrics

    return [r["val_loss"] for r in read_metrics(run) if isinstance(r.get("val_loss"), (int, float))]


def _finish(states: list[RunState], tokens_art: artifacts.Artifact, out: Path, config: SweepConfig) -> None:
    """The table, the plots and the manifest: OUT becomes the sweep artifact."""
    from llmkit.charts import loss_curves, read_metrics
    from llmkit.model.records import CheckpointStats

    val = tokens_art.stats.get("val", {})
    bytes_per_token = val["bytes"] / val["tokens"] if val.get("tokens") else None
    build = artifacts.in_place_builder(out, "sweep")
    build.add_input("tokens", tokens_art)
    rows = []
    for state in states:
        run_art = artifacts.load(out / RUNS / state.run.name, kind="checkpoint")
        build.add_input(f"run:{state.run.name}", run_art)
        losses = _val_losses(run_art.path)
        stats = CheckpointStats.of(run_art)
        final = stats.val_loss
        row = state.run.row()
        if stats.tokens_seen:  # whole steps: up to a batch past the planned tokens, and that is what the fit must see
            row.update(planned_tokens=row["tokens"], tokens=stats.tokens_seen,
                       flops=6.0 * state.run.non_embedding_params * stats.tokens_seen)
        rows.append(dict(
            row, state="done", steps=stats.step, final_val_loss=final,
            best_val_loss=min(losses) if losses else None,
            bits_per_byte=final / math.log(2) / bytes_per_token if final is not None and bytes_per_token else None,
            seconds=run_art.manifest.runtime.get("train_seconds"), fingerprint=run_art.fingerprint,
        ))
    vocab = int(tokens_art.stats["vocab_size"])
    if (diverged := above_a_uniform_guess([(row["name"], row["final_val_loss"]) for row in rows], vocab)):
        from llmkit.console import note

        note(f"{diverged}; scaling fit would take them as measured: lower --lr in a new sweep (--force, or another -o)")
    budgets: dict[str, list[RunState]] = {}  # (labels name one budget each: grid.budget_label)
    for state in states:
        label = f"{budget_label(state.run.flops_budget)} FLOPs" if state.run.flops_budget else f"{state.run.tokens:,} tokens"
        budgets.setdefault(label, []).append(state)
    plots = []
    shutil.rmtree(out / PLOTS, ignore_errors=True)  # only this grid's figures are listed
    for label, members in budgets.items():
        path = out / PLOTS / ("loss-" + label.split()[0].replace(",", "").replace("+", "") + ".png")
        runs = [(s.run.name, read_metrics(out / RUNS / s.run.name)) for s in members]
        loss_curves(runs, path, x="tokens", tokens_per_step={s.run.name: float(s.run.config.batch_tokens) for s in members},
                    title=f"sweep: {label}")
        plots.append(path.relative_to(out).as_posix())
    build.config = _sweep_config(config)
    build.seed = config.base.seed
    build.stats = {"runs": rows, "plots": plots, "count": "non-embedding parameters; flops = 6 x non-embedding params x tokens",
                   "vocab_size": vocab,  # (inspect names the runs that diverged: above_a_uniform_guess)
                   # (scaling fit names the runs that read it more than once: their tokens are not all new data)
                   "train_tokens": int((tokens_art.stats.get("train") or {}).get("tokens") or 0) or None}
    build.runtime = {"parallel": config.parallel}
    table = [{k: v for k, v in row.items() if k != "seconds"} for row in rows]  # wall time: not the same on a rerun
    write_table(out, table)
    artifacts.finalize_in_place(build, [PLOTS, TABLE])
