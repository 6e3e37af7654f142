"""Launching a training stage: the run directory, torchrun, and each worker's process setup.

    launch(_train, out, config, devices=config.devices, resume=resume, force=force, inputs={"tokens": str(tokens)})

`launch` checks the devices, prepares the run directory on the first process only (another
node, or a non-zero rank started by an outside torchrun, finds it prepared and must neither
refuse nor empty it; see `run_directory` for what the first process guarantees), then runs
`entry(config=..., out=..., resume=..., **inputs)` here, or in every process under torchrun
when the run spans several. The config always travels as its
flat option dict, in-process too, so both paths run the same round trip.

Inside `entry`, `worker_process(devices)` sets the CPU threads and joins the process group,
`split_batch` cuts the global batch into micro-batches and `runtime_record` says in the
manifest how the run executed. Pretrain, finetune and any later training stage use these.
"""

from __future__ import annotations

import os
import shutil
import tempfile
from contextlib import contextmanager, nullcontext, suppress
from pathlib import Path
from typing import Any, Callable, Iterator

from llmkit.errors import UsageError, UserError, add_advice, advice_of, kept_run_can_go_on
from llmkit.options import Options
from llmkit.train.options import Devices, resolve_precision


LAUNCH_DIR = ".launch"  # where runs before 2026-12-05 kept the workers' spec and error file, in the run directory


def first_process(devices: Devices) -> bool:
    """True on the process that owns the run directory: rank 0, or node 0 before torchrun starts."""
    from llmkit.train import distributed

    if distributed.under_torchrun():
        return os.environ.get("RANK") == "0"
    return devices.node_rank == 0


def refuse_resume_with_force(resume: bool, force: bool) -> None:
    """A training stage's first check (a usage error comes before its inputs are read), and launch's."""
    if resume and force:
        raise UsageError("--resume continues the run in -o and --force replaces it: give one of them")


def launch(entry: Callable[..., None], out: Path, config: Options, *, devices: Devices, resume: bool, force: bool,
           inputs: dict[str, str], reads: list[Path | str | None] = (),
           compared: Callable[[], dict[str, str]] | None = None) -> Path:
    """Run a training stage's `entry(config=, out=, resume=, **inputs)` on the devices asked for;
    returns the run directory. `reads` are further paths the stage reads (data files) that the
    run directory must stay clear of, besides `inputs`. `compared`: the digests of the plain files
    the stage reads, by input role or option name, which the nodes of a multi-node run compare in
    place of their paths (computed here, once a node, and only then)."""
    from llmkit.train import distributed

    out = Path(out)
    refuse_resume_with_force(resume, force)
    from llmkit.model import cpu_gemm

    cpu_gemm.library()  # a wrong LLMKIT_CPU_GEMM is this command's usage error, not each worker's
    gpus = distributed.resolve_gpus(devices.gpus)
    distributed.check_gpus(gpus)
    if gpus > 0 and devices.nproc > 1:
        raise UsageError("--nproc sets CPU processes; with GPUs use --gpus N (one process per GPU)")
    arguments: dict[str, Any] = {"config": config.flat(), "out": str(out.resolve()), "resume": resume, **inputs}
    per_node = gpus if gpus > 0 else devices.nproc
    from llmkit.train.layout import check_world

    check_world(per_node * devices.nnodes, devices.tp, devices.pp)
    if devices.nnodes > 1 and devices.node_rank == 0 and not distributed.under_torchrun():
        distributed.check_port_free(devices.master_port)  # (before the run directory: --force's advice followed it)
    owner = first_process(devices)
    # (another node's, or rank's, view of the run directory the first process prepares: left to it; made here, it
    # was an existing folder to node 0 when this node started first)
    with run_directory(out, resume=resume, force=force, inputs=[*reads, *inputs.values()]) if owner else nullcontext():
        if owner:
            shutil.rmtree(out / LAUNCH_DIR, ignore_errors=True)  # an earlier version's multi-process session, killed
        if (per_node > 1 or devices.nnodes > 1) and not distributed.under_torchrun():
            # The workers' spec and error file in a folder of this node's own, not the run directory: on a
            # shared filesystem every node wrote the same RUN/.launch (the last node's options ran everywhere),
            # a node started before node 0 made the run directory node 0 then refused, and one that failed
            # left its spec behind to block every later run there. It goes however the workers end.
            from llmkit.runtime import own_folder

            launch_dir = own_folder(Path(tempfile.gettempdir()), "llmkit-launch")
            try:
                distributed.relaunch(
                    f"{entry.__module__}:{entry.__name__}", arguments, launch_dir,
                    nproc=per_node, nnodes=devices.nnodes, node_rank=devices.node_rank,
                    master_addr=devices.master_addr, master_port=devices.master_port, join_timeout=devices.join_timeout,
                    compared=compared() if compared is not None and devices.nnodes > 1 else None,
                )
            finally:
                shutil.rmtree(launch_dir, ignore_errors=True)
        else:
            entry(**arguments)
    return out


@contextmanager
def run_directory(out: Path, *, resume: bool, force: bool, inputs: list[Path | str | None], kind: str = "checkpoint") -> Iterator[None]:
    """The run directory, held by this run for the length of the block (llmkit.outputs.output_lock).

    It may not be, lie in or contain an input, even with --force; an existing one needs --resume
    or --force. With --force the old run is moved aside (`.RUN.replaced-*`) and deleted once the
    new one has written a checkpoint (`discard_replaced_runs`, which the loop calls). A run that
    fails before writing anything worth keeping leaves no directory behind (an empty one it was given,
    made for it, empty), and with --force the
    old run back in its place; one killed outright (SIGKILL) gets it put back by the next run on
    the directory. It is marked (outputs.RUN_MARK) so that a later --force knows it for llmkit's.
    """
    from llmkit import outputs

    # not an input, not a file; its folder exists; not RUN/ema, RUN/average or RUN/best (a run there, the run's next resume
    # replaced), but a step checkpoint as -o is refused below, saying how to resume its run
    outputs.check_output(out, force=True, inputs=inputs, resume=resume, a_runs_own=run_of_step_checkpoint(out) is not None,
                         replacing=force or resume, writes=kind)
    with outputs.output_lock(out, keep_replaced=True):
        _put_back_replaced_run(out, force and not resume)
        empty = outputs.empty_folder(out)  # (made for the run with mkdir, a mount point too: used in place)
        from llmkit.artifacts import manifest_kind

        made = manifest_kind(out)  # (another kind was refused as -o was checked)
        run = run_of_step_checkpoint(out)
        if run is not None:  # (before "exists; pass --resume or --force", which both refuse here)
            # it resumes (it holds a training state), but that step's weights would become a later step's, or
            # (--force) another run's, inside the run's own checkpoints/
            if made != "checkpoint":  # (a new folder there: no step to start from)
                raise UserError(f"-o {out} lies inside {out.parent}, where the training run {run} keeps its own checkpoints; "
                                "write the output elsewhere")  # (outputs.refuse_a_place_of_a_run's words)
            raise UserError(f"{out} is a step checkpoint of the run {run}; resume the run itself (-o {run} --resume), or "
                            f"write a new run elsewhere that starts from it (llmkit pretrain --init-from {out}, or llmkit finetune {out})")
        if out.exists() and not resume and not force and not empty:
            raise UserError(f"run directory {out} already exists; pass --resume to continue it or --force to start over")
        from llmkit.train.checkpoint import CHECKPOINTS, STATE_JSON, step_dirs

        if resume and made == "checkpoint" and not (out / STATE_JSON).is_file() and not step_dirs(out):
            raise UserError(f"{out} is a checkpoint no training run wrote (an average, an import): it has no training state "
                            f"to resume; train from its weights instead (llmkit pretrain --init-from {out}, or llmkit "
                            f"finetune {out})")
        if (out / CHECKPOINTS).exists() and not (out / CHECKPOINTS).is_dir():
            raise UserError(f"{out / CHECKPOINTS} is a file where the run keeps its checkpoints folder; move it away")
        replaced = None  # (an empty folder: nothing to move aside or put back)
        if out.exists() and not resume and not empty:
            replaced = Path(tempfile.mkdtemp(prefix=f".{out.name}.replaced-", dir=out.resolve().parent)) / out.name
            try:
                os.replace(out, replaced)
            except OSError:  # (a run folder one may not move: its empty holder was left beside it)
                replaced.parent.rmdir()
                raise
        created = not out.exists()
        out.mkdir(exist_ok=True)
        (out / outputs.RUN_MARK).touch()
        try:
            yield
        except BaseException as stopped:
            if isinstance(stopped, KeyboardInterrupt) and kind != "sweep" and not advice_of(stopped):
                _say_what_an_interruption_kept(stopped, out, force=force, replaced=replaced is not None)
            if kept_run_can_go_on(stopped) and not advice_of(stopped) and _worth_keeping(out):  # (a full disk, mid-run)
                if kind == "sweep":
                    kept, rerun = "the sweep is kept in {} with its finished runs", (
                        "rerun the command without --force to continue (with it, the sweep starts over)" if force
                        else "rerun the same command to continue")
                else:
                    kept, rerun = "the run is kept in {} with its checkpoints", (
                        f"rerun the command with --resume{' in place of --force' if force else ''} to continue from the "
                        "last one")
                add_advice(stopped, f"{kept.format(out)}: once that is fixed, {rerun}")
            if (created or empty) and not _worth_keeping(out):
                if created:
                    shutil.rmtree(out, ignore_errors=True)
                else:  # (left as it was found: empty)
                    for entry in out.iterdir():
                        if entry.is_dir() and not entry.is_symlink():
                            shutil.rmtree(entry, ignore_errors=True)
                        else:
                            with suppress(OSError):  # (the stop's own error is the one to tell)
                                entry.unlink()
                if replaced is not None and replaced.is_dir():
                    os.replace(replaced, out)
                    replaced.parent.rmdir()
                    replaced = None
                    # said on the error's line, instead of an interruption's usual advice (--resume: the old run)
                    if kind == "sweep":  # (no --resume: the same command goes on with a sweep)
                        add_advice(stopped, f"the new sweep stopped before any run saved a checkpoint, so the sweep --force "
                                            f"replaced is back in {out}; rerun with --force to start over (without it, the "
                                            "old sweep goes on)")
                    else:
                        add_advice(stopped, f"the new run stopped before its first checkpoint, so the run --force replaced is "
                                            f"back in {out}; rerun with --force to start over (--resume would continue the old run)")
            raise
        finally:
            if replaced is not None:
                shutil.rmtree(replaced.parent, ignore_errors=True)


def _say_what_an_interruption_kept(stopped: BaseException, out: Path, *, force: bool, replaced: bool) -> None:
    """A run stopped by Ctrl-C or SIGTERM: the step its --resume goes on from, or that nothing was
    kept (the advice was the same either way, "--resume ..., or as it was if it saved none")."""
    from llmkit import artifacts
    from llmkit.model.records import read_task
    from llmkit.train.checkpoint import resume_point, saved_step

    try:
        finished = (out / artifacts.MANIFEST).is_file()
        task = read_task(artifacts.load(out, kind="checkpoint")) if finished else None
        # (a LoRA run's merged final weights are no point a --resume trains on: the loop's rule)
        merged = task is not None and task.lora is not None and task.lora.merged
        point = resume_point(out, finished_run_resumable=not merged) if _worth_keeping(out) else None
        step = saved_step(point) if point is not None else None
    except (UserError, OSError):
        return  # (the usual advice: --resume says what is wrong with the run)
    if point is not None:
        add_advice(stopped, f"its last checkpoint is step {step} ({point}): rerun with --resume"
                            f"{' in place of --force' if force else ''} to continue from it")
    elif not replaced:  # (a --force run's old run put back says so itself)
        add_advice(stopped, "it stopped before its first checkpoint (--save-every), so nothing was kept: rerun the "
                            "command to start again")


def _replaced_runs(out: Path) -> list[Path]:
    """The folders `.RUN.replaced-*` that hold a run a --force run moved aside."""
    from llmkit.outputs import temporaries

    return temporaries(out, "replaced")


def discard_replaced_runs(out: Path) -> None:
    """Delete the run that a --force run replaced: called once the new run holds a checkpoint."""
    for folder in _replaced_runs(out):
        shutil.rmtree(folder, ignore_errors=True)


def _put_back_replaced_run(out: Path, force: bool) -> None:
    """A --force run killed before its first checkpoint (SIGKILL, the OOM killer: no handler ran)
    left the run it replaced aside; until the new run holds a checkpoint that old run is the only
    one worth having, so it goes back to `out` rather than being deleted with the temporaries."""
    old = next((folder / out.name for folder in _replaced_runs(out) if (folder / out.name).is_dir()), None)
    if old is not None and not (out.exists() and _worth_keeping(out)):
        from llmkit.console import note

        shutil.rmtree(out, ignore_errors=True)  # the killed run's mark and metrics: nothing to resume from
        os.replace(old, out)
        kept = ("it is kept aside again until this --force run writes its first checkpoint" if force
                else f"the run it replaced is back in {out}")
        note(f"a --force run on {out} was stopped before its first checkpoint; {kept}")
    discard_replaced_runs(out)


def written_elsewhere(out: Path, devices: Devices) -> bool:
    """On a node other than node 0, which writes the run: said, for the stage to print in place of
    the checkpoint (a node-local -o holds nothing here)."""
    if first_process(devices) or devices.nnodes == 1:
        return False
    from llmkit.console import err

    err.print(f"node {devices.node_rank} of {devices.nnodes} finished its part; node 0 wrote the run to its {out}",
              soft_wrap=True, markup=False)
    return True


def _worth_keeping(out: Path) -> bool:
    """A checkpoint, here or in a run below (a sweep's): what --resume continues from. Metrics
    alone are not (a resume would start again at step 0), and never worth the run they replace."""
    from llmkit.artifacts import is_manifest

    # (not one in a checkpoint's temporary folder: a run killed mid-rename has nothing there to resume)
    return any(is_manifest(path) and not any(part.startswith(".") for part in path.relative_to(out).parts)
               for path in out.rglob("manifest.json"))


@contextmanager
def worker_process(devices: Devices) -> Iterator[Any]:
    """This process's threads, process group and device, for the length of the block."""
    import torch

    from llmkit.train import distributed

    from llmkit.runtime import respect_omp_thread_limit

    if devices.threads > 0:
        torch.set_num_threads(devices.threads)
    respect_omp_thread_limit()  # (a torchrun worker starts with one a core: its own process, past the CLI's check)
    from llmkit.train.layout import build_layout

    info = distributed.init(distributed.resolve_gpus(devices.gpus))
    try:
        info.layout = build_layout(info.world_size, info.rank, info.device.type, tp=devices.tp, pp=devices.pp,
                                   schedule=devices.pp_schedule, microbatches=devices.pp_microbatches)
        yield info
    finally:
        distributed.shutdown()


def planned_split(devices: Devices, ema: float | None, check_model: Callable[[Any], None] | None = None):
    """The layout a --tp/--pp run will take (None without one), for a stage to check its model and
    batch against before any process starts (a mistake cost the start of N processes, 10-15 s on a
    CPU; the workers check again, for library callers): the process count and --ema checked here,
    after `check_model(layout)`, the model's own limits (the process count the world's refusal
    advised met those next: --nproc 3 for --tp 3, then "--tp 3 does not divide --n-head (4)")."""
    from llmkit.train.layout import Layout, check_world
    from llmkit.train.layout import EMA_UNDER_SPLIT_MODEL

    if devices.tp == 1 and devices.pp == 1:
        return None
    world = planned_world(devices)
    layout = Layout(dp=max(1, world // (devices.tp * devices.pp)), tp=devices.tp, pp=devices.pp, schedule=devices.pp_schedule,
                    microbatches=(devices.pp_microbatches or devices.pp) if devices.pp > 1 else 1)
    if check_model is not None:
        check_model(layout)
    check_world(world, devices.tp, devices.pp)
    if ema is not None:
        raise UsageError(EMA_UNDER_SPLIT_MODEL)
    return layout


def planned_world(devices: Devices) -> int:
    """The processes a run will have: those of the torchrun it runs under, or those its options ask for."""
    from llmkit.train import distributed

    if distributed.under_torchrun():
        return int(os.environ.get("WORLD_SIZE", "1"))
    return (distributed.resolve_gpus(devices.gpus) or devices.nproc) * devices.nnodes


def run_of_step_checkpoint(out: Path) -> Path | None:
    """The training run whose checkpoints/ folder `out` is in (None: it is in none)."""
    from llmkit import outputs
    from llmkit.train.checkpoint import CHECKPOINTS

    folder = out.resolve().parent
    return folder.parent if folder.name == CHECKPOINTS and (folder.parent / outputs.RUN_MARK).exists() else None


CADENCE = ("eval_every", "save_every", "keep_last")  # when a run validates and saves: runtime, so not checked on resume
# How much a run validates on (pretrain's, finetune's): runtime too; a default in its place changed what the
# validation loss of the steps after a resume measured, under the same fingerprint.
VALIDATION_SIZE = ("eval_tokens", "eval_examples")


def keep_recorded_settings(config: Options, out: Path, *, resume: bool, lengths: tuple[str, ...], length_left_out: bool) -> Options:
    """`config` with what a --resume leaves out taken from the run in `out`, as the run recorded it
    (one read of the checkpoint it goes on from): its length (`lengths`, when `length_left_out`),
    whose defaults would re-plan the run and its schedule, and its --eval-every/--save-every/--keep-last,
    whose defaults (every 250 and 500 steps) silently stopped a resumed run's intermediate
    checkpoints, its --eval-tokens/--eval-examples, and a --no-batch-invariant it ran with (the default
    turned per-sequence gradients on for the rest of a CPU run: other bits than the run's). Unchanged
    when there is nothing to resume."""
    point = _resume_point_manifest(out) if resume else None
    if point is None:
        return config
    import dataclasses

    from llmkit.console import note
    from llmkit.train.options import recorded_options

    if length_left_out:
        recorded = recorded_options(point.config)
        length = {key: recorded[key] for key in lengths if key in recorded}
        if length and any(length[key] != getattr(config, key) for key in length):
            shown = ", ".join(f"--{key.replace('_', '-')} {value}" for key, value in length.items()
                              if value is not None and value != config.default_of(key))
            note(f"the run's length is kept as the run recorded it ({shown or 'the default'}); give it to change it")
        config = dataclasses.replace(config, **length)
    def recorded(names: tuple[str, ...], options: Any, kind: type) -> dict[str, Any]:
        return {name: point.runtime[name] for name in names  # (not given: was_given is False, not None)
                if hasattr(options, name) and isinstance(point.runtime.get(name), kind) and config.was_given(name) is False
                and point.runtime[name] != getattr(options, name)}

    cadence = recorded(CADENCE, config.checkpoints, int)
    size = recorded(VALIDATION_SIZE, config, int)
    _refuse_another_validation_size_where_losses_are_compared(config, point)
    # (recorded as resolved: off kept; on is what the default resolves to where it was on)
    invariant = {name: value for name, value in recorded(("batch_invariant",), config.devices, bool).items() if value is False}
    kept = {**cadence, **size, **invariant}
    if kept:
        note("the run's " + ", ".join("--no-batch-invariant" if name == "batch_invariant" else f"--{name.replace('_', '-')} {value}"
                                      for name, value in kept.items())
             + (" kept as the run recorded it; give the option to change it" if len(kept) == 1 else
                " kept as the run recorded them; give them to change them"))
        config = dataclasses.replace(config, checkpoints=dataclasses.replace(config.checkpoints, **cadence),
                                     devices=dataclasses.replace(config.devices, **invariant), **size)
    return config


def _refuse_another_validation_size_where_losses_are_compared(config: Options, point) -> None:
    """--keep-best and --patience compare each validation loss with the earlier ones: measured on more (or
    less) validation text after a resume, a loss was compared with losses of other text, unsaid (a review:
    --keep-best took a step 16 over a step 12 that 8 windows had measured, against 64)."""
    checkpoints = getattr(config, "checkpoints", None)
    comparing = [flag for flag, on in (("--keep-best", getattr(checkpoints, "keep_best", False)),
                                       ("--patience", getattr(checkpoints, "patience", 0))) if on]
    changed = [name for name in VALIDATION_SIZE if hasattr(config, name) and isinstance(point.runtime.get(name), int)
               and config.was_given(name) and point.runtime[name] != getattr(config, name)]
    if comparing and changed:
        from llmkit.errors import UsageError

        flag = f"--{changed[0].replace('_', '-')}"
        raise UsageError(f"{flag} {getattr(config, changed[0])} is not the run's {point.runtime[changed[0]]}, and "
                         f"{' and '.join(comparing)} compare{'s' if len(comparing) == 1 else ''} each validation loss with the "
                         f"run's earlier ones, measured on that much: leave {flag} out to go on, or start a new run with it")


def _resume_point_manifest(out: Path):
    """The manifest of the checkpoint a --resume of the run in `out` goes on from; None where there
    is none (nothing to resume, a step checkpoint given as -o, which is refused as such, or a run
    folder the run's own checks will name)."""
    if not out.is_dir() or run_of_step_checkpoint(out) is not None:
        return None
    from llmkit import artifacts
    from llmkit.train.checkpoint import resume_point

    try:
        point = resume_point(out)
        return artifacts.load(point, kind="checkpoint").manifest if point is not None else None
    except UserError:
        return None


def largest_divisor(number: int, limit: int) -> int:
    """The largest divisor of `number` up to `limit`: the micro-batch that splits a batch of `number` exactly."""
    return max(d for d in range(1, min(number, limit) + 1) if number % d == 0)


def split_batch(global_batch: int, micro_batch: int, world: int, *, what: str, fix: Callable[[int], str]) -> tuple[int, int]:
    """(micro-batch, accumulation steps) for a global batch of samples over `world` processes.

    The micro-batch shrinks when the global batch is smaller than one micro-batch per process;
    a global batch that does not divide is an error naming `what` was asked, `fix(multiple)` (every
    multiple of it splits; a batch under it, a multiple of the processes, too) and,
    where the batch divides over the processes, the --micro-batch that splits it as it is.
    """
    micro = max(1, min(micro_batch, global_batch // world))
    if global_batch % (micro * world):
        # From the micro-batch asked for, not the shrunk one: every multiple of that splits.
        keep = ""
        if global_batch % world == 0:
            share = global_batch // world
            keep = f", or keep it and pass --micro-batch {largest_divisor(share, micro_batch)}"
        # every multiple of micro_batch x world splits; under it, so does one that gives each process as many samples
        smaller = (f" (a batch under that splits too when it is a multiple of {world} sequences)"
                   if global_batch < micro_batch * world and world < micro_batch * world else "")
        taken = "" if world == 1 else f", {world} at a time (one per process, or per replica and pipeline micro-batch)"
        if global_batch % world:  # (no micro-batch splits it: the shrunk one was named, which no one typed)
            problem = f"{what} does not split evenly into {world} shares (one per process, or per replica and pipeline micro-batch)"
        else:
            problem = f"{what} does not split into micro-batches of {micro}{taken}"
        raise UsageError(f"{problem}; {fix(micro_batch * world)}{smaller}{keep}")
    return micro, global_batch // (micro * world)


def note_a_smaller_micro_batch(config: Options, micro: int) -> None:
    """A --micro-batch typed above what a step gives each process runs at that size: said, since it
    sizes what a GPU run holds (split_batch shrinks it; the bits are the same)."""
    asked = config.devices.micro_batch
    if micro < asked and config.was_given("micro_batch"):
        from llmkit.console import note

        note(f"--micro-batch {asked} is more than the {micro} sequence(s) a step gives each process: micro-batches of {micro}")


def runtime_record(config: Options, info: Any, micro_batch: int, accumulation: int) -> dict[str, Any]:
    """The manifest's `runtime` of a training run: its runtime options (devices, when it validates
    and saves) and what they resolved to (`precision`: the --precision option, recorded as what it
    meant on this device)."""
    record = dict(config.runtime(), world_size=info.world_size, device=str(info.device), micro_batch=micro_batch,
                  grad_accumulation=accumulation, precision=resolve_precision(config.numerics.precision, info.device.type))
    if info.layout is not None and info.layout.model_parallel:
        record["layout"] = {"dp": info.layout.dp, "tp": info.layout.tp, "pp": info.layout.pp,
                            "pp_microbatches": info.layout.microbatches}
    return record
