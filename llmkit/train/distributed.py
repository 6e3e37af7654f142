"""Many processes through PyTorch's own engine: torchrun relaunch, process group, DDP / FSDP2.

`llmkit pretrain --gpus N` (or `--nproc N` on CPU) writes its resolved arguments to a JSON file
and relaunches itself as `python -m torch.distributed.run ... -m llmkit.train.worker FILE`;
each worker reads RANK/WORLD_SIZE/LOCAL_RANK from the environment torchrun sets, joins the
process group (NCCL on GPU, gloo on CPU) and runs the same stage function. One process and
`--gpus 1` run in-process, without torchrun.
"""

from __future__ import annotations

import json
import os
import re
import signal
import subprocess
import sys
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch

from llmkit.errors import UsageError, UserError
from llmkit.runtime import under_torchrun  # noqa: F401  (called as distributed.under_torchrun; torch-free there, for the options)

ERROR_FILE = "error.txt"


@dataclass
class DistInfo:
    rank: int = 0
    world_size: int = 1
    local_rank: int = 0
    device: torch.device = torch.device("cpu")
    layout: Any = field(default=None)  # llmkit.train.layout.Layout: dp x tp x pp, set by the worker

    @property
    def data_parallel(self) -> int:
        return self.layout.dp if self.layout is not None else self.world_size

    @property
    def data_rank(self) -> int:
        return self.layout.dp_rank if self.layout is not None else self.rank

    @property
    def batch_ways(self) -> int:
        """Micro-batches of one accumulation step across the run (dp replicas x pipeline micro-batches)."""
        return self.layout.batch_ways if self.layout is not None else self.world_size

    @property
    def is_main(self) -> bool:
        return self.rank == 0

    @property
    def distributed(self) -> bool:
        return self.world_size > 1


def check_gpus(gpus: int) -> None:
    if gpus <= 0:
        return
    found = torch.cuda.device_count() if torch.cuda.is_available() else 0
    if gpus > found:  # (an option this machine cannot take: a usage error, exit 2, as every layout refusal)
        raise UsageError(
            f"--gpus {gpus} asks for {gpus} GPU(s) but {found} {'was' if found == 1 else 'were'} found on this machine; "
            f"pass --gpus {found}" + (" or leave --gpus out" if found else " (CPU training: leave --gpus out, --nproc N for several processes)")
        )


def init(gpus: int) -> DistInfo:
    """Join the process group when launched by torchrun; pick this process's device."""
    use_cuda = gpus > 0
    if not under_torchrun():
        device = torch.device("cuda", 0) if use_cuda else torch.device("cpu")
        if use_cuda:
            torch.cuda.set_device(device)
        return DistInfo(device=device)
    import torch.distributed as dist

    rank, world, local = int(os.environ["RANK"]), int(os.environ["WORLD_SIZE"]), int(os.environ["LOCAL_RANK"])
    if use_cuda:
        device = torch.device("cuda", local)
        torch.cuda.set_device(device)
        dist.init_process_group("nccl", device_id=device)
    else:
        device = torch.device("cpu")
        dist.init_process_group("gloo")
    _check_same_options(rank, world)
    return DistInfo(rank=rank, world_size=world, local_rank=local, device=device)


OPTIONS_DIGEST = "LLMKIT_OPTIONS_DIGEST"  # set by llmkit.train.worker: a digest of the options this process was given


def _check_same_options(rank: int, world: int) -> None:
    """Every process of a run must have been given the same options (nodes start with their own
    command lines): a node with another --max-steps hung the run at the end, another --seed trained
    from other weights under rank 0's seed, another --nproc failed on a batch that was fine."""
    digest = os.environ.get(OPTIONS_DIGEST)
    if world == 1 or digest is None:
        return
    import torch.distributed as dist

    given: list[Any] = [None] * world
    dist.all_gather_object(given, (digest, os.environ.get("GROUP_RANK", "0")))
    nodes = sorted({node for d, node in given if d != given[0][0]}, key=int)
    if nodes:
        dist.destroy_process_group()  # (left to the interpreter's exit, gloo's threads died "without an active exception")
        raise UsageError(f"the nodes of this run were given different options (node {', '.join(nodes)} other than node "
                         f"{given[0][1]}'s): run the same command on every node; only --node-rank (and --threads) may "
                         "differ, and the inputs must be the same artifacts (a copy at another path is; other tokens are "
                         "not) (with --resume, -o must be on a filesystem every node shares: a node without the run "
                         "takes other defaults)")


def shutdown() -> None:
    import torch.distributed as dist

    if dist.is_available() and dist.is_initialized():
        dist.destroy_process_group()


def barrier(info: DistInfo) -> None:
    if info.distributed:
        import torch.distributed as dist

        dist.barrier()


def to_device(batch: tuple, device: torch.device) -> tuple:
    """A batch's tensors on `device` (asynchronous copies to a GPU); other items as they are."""
    non_blocking = device.type == "cuda"
    return tuple(t.to(device, non_blocking=non_blocking) if isinstance(t, torch.Tensor) else t for t in batch)


def all_reduce_mean(value: torch.Tensor, info: DistInfo) -> torch.Tensor:
    if info.distributed:
        import torch.distributed as dist

        dist.all_reduce(value, op=dist.ReduceOp.SUM)
        value = value / info.world_size
    return value


def all_reduce_sum(value: torch.Tensor, info: DistInfo) -> torch.Tensor:
    if info.distributed:
        import torch.distributed as dist

        dist.all_reduce(value, op=dist.ReduceOp.SUM)
    return value


def all_gather_bytes(value: torch.Tensor, info: DistInfo) -> list[torch.Tensor]:
    """Gather a same-sized uint8 tensor (an RNG state) from every rank; no pickle involved."""
    if not info.distributed:
        return [value]
    import torch.distributed as dist

    on_device = value.to(info.device)
    gathered = [torch.empty_like(on_device) for _ in range(info.world_size)]
    dist.all_gather(gathered, on_device)
    return [g.cpu() for g in gathered]


def wrap(model: torch.nn.Module, strategy: str, info: DistInfo, precision: str) -> torch.nn.Module:
    """DistributedDataParallel (default) or FSDP2 `fully_shard` per block and at the root;
    `precision` is the run's resolved --precision."""
    if strategy not in ("ddp", "fsdp"):
        raise UserError(f"unknown --strategy {strategy!r}; choose ddp or fsdp")
    if not info.distributed:
        return model
    if strategy == "fsdp":
        from torch.distributed.fsdp import MixedPrecisionPolicy, fully_shard

        options = {}
        if info.device.type == "cuda" and precision == "bf16":  # gather and compute in bf16, reduce gradients in fp32
            options["mp_policy"] = MixedPrecisionPolicy(param_dtype=torch.bfloat16, reduce_dtype=torch.float32)
        for block in getattr(model, "blocks", []):
            fully_shard(block, **options)
        fully_shard(model, **options)
        return model
    from torch.nn.parallel import DistributedDataParallel as DDP

    # Gradients as views into the all-reduce buckets: no second copy of every gradient (4 bytes a parameter).
    return DDP(model, device_ids=[info.local_rank] if info.device.type == "cuda" else None, gradient_as_bucket_view=True)


@contextmanager
def gradient_sync(model: torch.nn.Module, enabled: bool):
    """Skip DDP's gradient all-reduce on all but the last micro-batch of an accumulation. FSDP2
    reduce-scatters every micro-batch's gradients, as torchtitan does: skipping it kept each rank's
    gradients whole until the step's last micro-batch, 4 bytes a parameter on every rank (32 GB a
    GPU for an 8B model), which sharding is there to avoid (measured on a CPU, a 50.7M model at
    --nproc 2 accumulating 4 micro-batches: 1.68 GB a rank, above DDP's 1.37 GB)."""
    if enabled or not hasattr(model, "no_sync"):  # (FSDP2 and one process: nothing to skip)
        yield
        return
    with model.no_sync():
        yield


def relaunch(
    entry: str,
    arguments: dict,
    launch_dir: Path,
    *,
    nproc: int,
    nnodes: int = 1,
    node_rank: int = 0,
    master_addr: str | None = None,
    master_port: int | None = None,
    join_timeout: int = 600,
    compared: dict[str, str] | None = None,
) -> None:
    """Run `entry(**arguments)` in `nproc` processes per node under torchrun; wait for it.

    A worker's one-line UserError is written to launch_dir/error.txt and raised here again, so
    the user sees one line however many processes ran.
    """
    launch_dir.mkdir(parents=True, exist_ok=True)
    spec = launch_dir / "launch.json"
    error_file = launch_dir / ERROR_FILE
    # argv: the user's command, which the workers' artifacts record (not the worker's own command line)
    # `compared`: what the nodes' processes compare by content in place of paths (llmkit.train.worker._options_digest)
    spec.write_text(json.dumps({"entry": entry, "arguments": arguments, "error_file": str(error_file), "argv": sys.argv,
                                "compared": compared or {}}, indent=2))
    command = [sys.executable, "-m", "torch.distributed.run", f"--nproc-per-node={nproc}"]
    if nnodes > 1:
        if not master_addr:
            raise UsageError("multi-node training needs --master-addr (the address of node 0) and --master-port")
        port = master_port or 29500  # (node 0's port was checked before the run directory was touched: launch.py)
        from llmkit.console import note

        # (node 0 alone waited in silence for as long as the others took, or forever)
        note(f"node {node_rank} of {nnodes}: waiting for all {nnodes} nodes to join at {master_addr}:{port} (each runs "
             f"the same command with its own --node-rank), up to --join-timeout {join_timeout} s; Ctrl-C stops")
        command += [f"--nnodes={nnodes}", f"--node-rank={node_rank}", f"--master-addr={master_addr}", f"--master-port={port}",
                    f"--rdzv-conf=timeout={join_timeout}"]
    else:
        command += ["--standalone"]
    env = dict(os.environ)
    from llmkit.runtime import users_omp_num_threads

    if users_omp_num_threads() is None:
        env["OMP_NUM_THREADS"] = "1"
    from llmkit.train.worker import LAUNCHER_PID

    env[LAUNCHER_PID] = str(os.getpid())  # the workers end if this process is killed outright (worker._end_with_the_agent)
    from llmkit.errors import debug_enabled

    if debug_enabled():
        env["LLMKIT_DEBUG"] = "1"
        env["PYTHONFAULTHANDLER"] = "1"  # (a worker's crash in native code then prints its Python stack)
    # torchrun's per-worker folders (error files, logs), in the launch folder, which goes with them: without
    # --log-dir it makes one in the temporary folder for every run and leaves it there, a torchelastic_* each.
    command += [f"--log-dir={launch_dir / 'torchrun'}", "-m", "llmkit.train.worker", str(spec)]
    held: list[str] = []
    returncode = _run_torchrun(command, env, held)
    if returncode != 0:
        if nnodes > 1 and not error_file.is_file():
            _refuse_nodes_that_did_not_join("".join(held), node_rank, nnodes, f"{master_addr}:{port}", join_timeout)
        failure = json.loads(error_file.read_text(encoding="utf-8")) if error_file.is_file() else None
        if (failure is None or failure.get("lost")) and not debug_enabled():  # (--debug: torchrun's whole account)
            # a process stopped by a signal says nothing, and one torchrun stops next may have seen only the connection go
            _refuse_a_stopped_process("".join(held), node_rank=node_rank, nproc=nproc, nnodes=nnodes)
        if failure is None and not debug_enabled():
            _refuse_a_silent_exit("".join(held), node_rank=node_rank, nproc=nproc, nnodes=nnodes)
        if failure is None:
            sys.stderr.write("".join(held))  # no worker explained the failure: torchrun's own lines and traceback
        if returncode < 0:  # torchrun itself was killed: what its workers then report is only the broken connection
            raise UserError(f"torchrun was killed ({signal.Signals(-returncode).name}) and its workers stopped with it; rerun "
                            "the command with --resume to continue from the last checkpoint")
        if failure is not None:
            error = (UsageError if failure["exit_code"] == 2 else UserError)(failure["message"])
            error.keeps_work = bool(failure.get("keeps_work"))  # (a worker's full disk: llmkit.train.launch's advice)
            raise error
        raise UserError(f"distributed training failed (torchrun exit code {returncode}); see the messages above")


def _refuse_a_stopped_process(noise: str, *, node_rank: int = 0, nproc: int = 1, nnodes: int = 1) -> None:
    """A worker stopped by a signal (the out-of-memory killer's SIGKILL, a `kill`) says nothing itself,
    nor do the others torchrun then stops; nor does torchrun stopped by a signal of its own: one line
    from torchrun's account of it (it was 34 to 90 lines of torchrun's traceback and failure table).
    A fault signal is a crash in native code, which --resume would meet again: said as one."""
    # The first process stopped by a signal (a worker exits 130 where it ends quietly on a SIGINT sent to it alone), in
    # torchrun's log line, then in its failure table: its root cause first, then the others, less the processes
    # torchrun itself stopped ("Sending process P closing signal"); a failure seen in the same poll as another's may
    # be listed among the others, the other made the root
    failures = [(int(m.group(1)), int(m.group(2))) for m in re.finditer(r"failed \(exitcode: (-?\d+)\) local_rank: (\d+)", noise)]
    closed = set(re.findall(r"Sending process (\d+) closing signal", noise))
    root = noise.find("Root Cause")
    for table in ((noise[root:], noise[:root]) if root >= 0 else (noise,)):
        failures += [(int(m.group(2)), int(m.group(1))) for m in re.finditer(
            r"local_rank: (\d+)\)\s*\n\s*exitcode\s*: (-?\d+) \(pid: (\d+)\)", table) if m.group(3) not in closed]
    code, local = next(((code, local) for code, local in failures if code < 0 or code == 130), (None, None))
    stopped = re.search(r"SignalException: Process \d+ got signal: (\d+)", noise)
    number = (-code if code < 0 else 2) if code is not None else None
    if stopped:
        number = int(stopped.group(1))
    elif number is None:
        return
    try:
        name = signal.Signals(number).name
    except ValueError:
        name = f"signal {number}"
    resume = "rerun the command with --resume to continue from the last checkpoint (where the run saved one)"
    if stopped:
        raise UserError(f"torchrun was stopped ({name}) and its workers with it; {resume}")
    process = _process_named(local, node_rank, nproc, nnodes)
    if name in ("SIGSEGV", "SIGBUS", "SIGILL", "SIGFPE", "SIGABRT"):
        raise UserError(f"{process} crashed ({name}): a fault in native code (PyTorch, a driver or a library), which "
                        "--resume would likely meet again; rerun with --debug to see where")
    raise UserError(f"{process} was {'interrupted' if name == 'SIGINT' else 'killed'} "
                    f"({name}{': out of memory?' if name == 'SIGKILL' else ''}) and torchrun stopped the others; {resume}")


def _process_named(local: int, node_rank: int, nproc: int, nnodes: int) -> str:
    """A worker as torchrun's account names it (its local rank), as the user knows it: by global rank."""
    if nnodes > 1:
        return f"process {node_rank * nproc + local} of the run (local {local} on node {node_rank})"
    return f"process {local} of the run"


def _refuse_a_silent_exit(noise: str, *, node_rank: int = 0, nproc: int = 1, nnodes: int = 1) -> None:
    """A worker that exited with a status of its own and wrote no error (a `sys.exit`, a library's
    `exit()`): one line naming it, from torchrun's root cause (it was torchrun's 40-line account)."""
    own = noise.count("Traceback (most recent call last)") - ("ChildFailedError" in noise) + noise.count("]: Traceback (most")
    if own > 0:  # a worker's traceback (its stage failed to import, its error file could not be written): shown, as it says why
        return
    failed = re.search(r"failed \(exitcode: (\d+)\) local_rank: (\d+)", noise)
    root = noise.find("Root Cause")
    entry = re.search(r"local_rank: (\d+)\)\s*\n\s*exitcode\s*: (\d+)", noise[root:]) if root >= 0 else None
    if not (failed or entry):
        return
    status, local = (int(failed.group(1)), int(failed.group(2))) if failed else (int(entry.group(2)), int(entry.group(1)))
    process = _process_named(local, node_rank, nproc, nnodes)
    raise UserError(f"{process} exited with status {status} without saying why (a sys.exit, or a library's exit); rerun "
                    "with --debug for torchrun's account")


def _refuse_nodes_that_did_not_join(noise: str, node_rank: int, nnodes: int, where: str, timeout: int) -> None:
    """The rendezvous timed out (torchrun's 30-line traceback): one line saying who did not come."""
    joined = re.search(r"Timed out after \d+ seconds waiting for clients\. (\d+)/(\d+) clients joined", noise)
    if joined:
        raise UserError(f"only {joined.group(1)} of {nnodes} nodes joined at {where} within --join-timeout {timeout} s; start "
                        "the same command on every node (each with its own --node-rank), or raise --join-timeout")
    if "DistNetworkError" in noise and "timed out" in noise and "trying to connect" in noise:
        raise UserError(f"node {node_rank}: node 0 did not answer at {where} within --join-timeout {timeout} s; start node 0 "
                        "(--node-rank 0) with the same command, check --master-addr and --master-port, or raise "
                        "--join-timeout")


def check_port_free(port: int) -> None:
    """Node 0 serves the rendezvous on --master-port: one in use ended in torchrun's 42-line traceback."""
    import socket

    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as probe:
        probe.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)  # as torchrun's store binds: a port in TIME_WAIT serves
        try:
            probe.bind(("", port))
        except OSError as exc:
            raise UsageError(f"--master-port {port} cannot be served on this machine (node 0): {exc.strerror or exc}; pass "
                             "another --master-port, the same on every node") from None


# torchrun's own agent log lines ("W1124 16:04:13.384000 25985 torch/distributed/elastic/..."), c10d's C++
# log lines ("[E1205 15:00:28.856169192 socket.cpp:1028] [c10d] The client socket has timed out ...") and the
# C++ stack c10d prints after one ("Exception raised from ...", "frame #0: ...", "<omitting python frames>")
_AGENT_LOG = re.compile(r"^[IWE]\d{4} \d\d:\d\d:\d\d\.\d+ +\d+ .*torch/distributed/|^\[[IWE]\d{4} [\d:.]+ [^\]]*\] \[c10d\]")
_RANK_TRACEBACK = re.compile(r"^\[rank\d+\]: Traceback \(most recent call last\)")
_RANK_LINE = re.compile(r"^\[rank\d+\]:")
_CPP_STACK = re.compile(r"^(Exception raised from |frame #\d+: |<omitting python frames>|\s*$)")


def _run_torchrun(command: list[str], env: dict, held: list[str]) -> int:
    """Run torchrun, passing the workers' output through live. torchrun's agent logs and its
    closing traceback are held back in `held`, for the caller to show where no worker explained
    a failure."""
    from llmkit.errors import Terminated

    def _forward(line: str) -> None:
        """A worker's line onto stderr; a closed stderr (`2>&1 | head`) is silenced, not the run's end
        (as llmkit's own console does, llmkit/console.py)."""
        try:
            sys.stderr.write(line)
            sys.stderr.flush()
        except BrokenPipeError:
            from llmkit.console import write_nowhere

            write_nowhere(sys.stderr)

    process = subprocess.Popen(command, env=env, stderr=subprocess.PIPE, text=True, bufsize=1)
    in_traceback = in_stack = in_rank_traceback = False
    try:
        for line in process.stderr:
            in_stack = line.startswith("Exception raised from ") or (in_stack and bool(_CPP_STACK.match(line)))
            # a worker's own traceback as torchrun prefixes it ("[rank1]: Traceback ...", a KeyboardInterrupt from
            # the SIGINT torchrun passes on): the one line above says what happened
            in_rank_traceback = bool(_RANK_TRACEBACK.match(line)) or (
                in_rank_traceback and (bool(_RANK_LINE.match(line)) or not line.strip()))  # (its blank lines unprefixed)
            if in_rank_traceback:
                held.append(line)
            elif line.startswith("Traceback (most recent call last)") or in_traceback:
                in_traceback = True
                held.append(line)
            elif _AGENT_LOG.match(line) or in_stack:
                held.append(line)
            else:
                _forward(line)
    except KeyboardInterrupt as stop:
        # Pass the stop on: a terminal's Ctrl-C reached torchrun too, but a SIGINT sent to this
        # process alone (`kill -INT`, a supervisor) did not, and its workers trained on to the end.
        # Then wait, so that no worker goes on writing into a run the caller cleans up or unlocks.
        process.send_signal(signal.SIGTERM if isinstance(stop, Terminated) else signal.SIGINT)
        try:
            process.wait(timeout=60)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait()
        raise
    return process.wait()


def resolve_gpus(requested: int | None) -> int:
    """GPUs to use on this node: as asked, or 1 when CUDA is present and 0 (CPU) otherwise."""
    import torch

    if requested is None:
        return 1 if torch.cuda.is_available() else 0
    return requested
