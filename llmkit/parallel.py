"""One ordered parallel map for the data stages (clean, tokenize).

    for result in ordered_map(process_batch, batches, workers=4, initializer=init_worker, initargs=(cfg,)):
        ...

Results come back in input order whatever the number of workers, so the output never depends
on it. Workers are spawned, never forked: the parent may hold threads (pyarrow, tokenizers,
torch) that a fork would copy mid-lock. `threads=True` runs them as threads of this process
instead, for a function that spends its time in native code that releases the GIL (tokenize's
encoders): no start-up, one copy of the state. At most `2 x workers` items are in flight, so
memory stays bounded by a few batches whatever the input size. With one worker everything runs
in this process, with no start-up cost.
"""

from __future__ import annotations

from collections import deque
from contextlib import contextmanager
from typing import Any, Callable, Iterable, Iterator, TypeVar

from llmkit.errors import UserError

Item = TypeVar("Item")
Result = TypeVar("Result")


def ordered_map(
    function: Callable[[Item], Result],
    items: Iterable[Item],
    *,
    workers: int,
    initializer: Callable[..., None] | None = None,
    initargs: tuple[Any, ...] = (),
    executor: str = "local",
    ray_address: str | None = None,
    threads: bool = False,
    on_start: Callable[[int], None] | None = None,
) -> Iterator[Result]:
    """`function(item)` for every item, in input order, on `workers` processes (here when workers <= 1).

    `initializer(*initargs)` runs once in every process that does work, this one included when
    workers <= 1 or `threads`. `executor="ray"` runs the same map on a Ray cluster (`ray_address`, or a local
    instance), `workers` actors there (0: one per CPU of the cluster). A worker that cannot start (a script without a `__main__` guard, which spawn
    needs) is a one-line error instead of a pool restarting it forever; one that dies once started, even on its first
    item, is WorkerDied (a rerun continues). `on_start(n)`, if given, is told how many workers do the work once
    that is settled (after the limits below; 1 when everything runs here), for the manifest.
    """
    if executor == "ray":  # a Ray cluster's actors instead of this machine's processes (llmkit.executor)
        from llmkit.executor import ray_ordered_map

        yield from ray_ordered_map(function, items, workers=workers, address=ray_address, initializer=initializer,
                                   initargs=initargs, on_start=on_start)
        return
    if workers > local_workers(workers):
        # More than the cores only adds start-up, memory and switching (7x slower at 32 on 2 cores)
        from llmkit.console import note

        usable = local_workers(workers)
        note(f"--workers {workers} is more than the {usable} core{'s' if usable > 1 else ''} this process may use; using {usable}")
    workers = local_workers(workers)
    if on_start is not None:
        on_start(workers)
    if workers <= 1 or threads:
        if initializer is not None:
            initializer(*initargs)
    if workers <= 1:
        yield from map(function, items)
        return
    if threads:
        from concurrent.futures import ThreadPoolExecutor

        with ThreadPoolExecutor(workers, thread_name_prefix="llmkit-worker") as pool:
            yield from _bounded(pool, function, items, workers)
        return
    import multiprocessing
    from concurrent.futures import ProcessPoolExecutor
    from concurrent.futures.process import BrokenProcessPool

    context = multiprocessing.get_context("spawn")
    # Set by the workers: [one got past spawn's re-import of __main__, one's initializer raised]. Results alone cannot
    # tell a worker that never started from one killed on its first item, and only the second may keep a resumed
    # run's partial output.
    started = context.RawArray("b", 2)
    done = 0
    try:
        with ProcessPoolExecutor(workers, mp_context=context, initializer=_start_worker,
                                 initargs=(initializer, initargs, started)) as pool:
            try:
                for result in _bounded(pool, function, items, workers):
                    done += 1
                    yield result
            except BaseException as stop:  # (a Ctrl-C or the consumer's error too: the pool's shutdown waits on the same)
                # (a Ctrl-C in the caller's loop arrives as the close of this generator, while it unwinds)
                stopped = isinstance(stop, KeyboardInterrupt) or isinstance(stop.__context__, KeyboardInterrupt)
                if stopped or isinstance(stop, BrokenProcessPool) or _a_worker_died(pool):
                    # (on a Ctrl-C too: a second one during the pool's shutdown left its idle workers waiting for
                    # the sentinels it never sent, and the exit joining them forever)
                    with _ctrl_c_deferred():
                        _unstick(pool)
                raise
    except BrokenProcessPool as exc:
        if done or (started[0] and not started[1]):  # one died since (the out-of-memory killer, a kill)
            from llmkit.errors import WorkerDied

            raise WorkerDied(f"a worker process died after {done} batch(es) (out of memory, or killed); rerun the command to "
                             "continue where it stopped, with fewer --workers if memory is short") from exc
        raise UserError(
            "the worker processes could not start; a Python script that runs an llmkit stage with several workers "
            "must call it under `if __name__ == \"__main__\":` (workers are spawned), or use one worker"
        ) from exc


def _unstick(pool) -> None:
    """A pool a worker died in: the others killed, and the pool's own write end of the result pipe
    closed, the last one, so that a reader waiting for the rest of a dead worker's message gets EOF
    and the pool breaks (its shutdown, which waits for its reader, then ends)."""
    _kill_the_rest(pool)
    writer = getattr(getattr(pool, "_result_queue", None), "_writer", None)
    if writer is not None:
        writer.close()  # (closing twice does nothing: the pool's shutdown closes it again)


def _kill_the_rest(pool) -> None:
    """The pool broke (a worker died): its shutdown stops the others with SIGTERM, which they ignore
    (`_start_worker`), and waits for them; one blocked writing a result larger than a pipe, which no
    one reads any more, never ended, and the command hung. (`_processes` is the pool's own record:
    private, read only here, where nothing public names a pool's processes.)"""
    _forget_cancelled(pool)
    for process in list((getattr(pool, "_processes", None) or {}).values()):
        try:
            process.kill()
        except (OSError, ValueError):  # (gone already, or closed)
            pass


def _forget_cancelled(pool) -> None:
    """A fresh future for each cancelled item of the pool's record of pending work
    (`_pending_work_items`, private as `_processes`), before its workers are killed: once the pool
    breaks, Python 3.11's manager thread sets every pending item's exception, which raises
    InvalidStateError for a cancelled future (a traceback on stderr after a Ctrl-C or SIGTERM's
    one-line error; the full suite's SIGTERM test saw it once). Replaced, not removed: the manager
    still looks the items up by id (removed, a result arriving meanwhile was a KeyError that ended
    the manager thread: a review). Nobody waits on the fresh futures."""
    from concurrent.futures import Future

    for item in list((getattr(pool, "_pending_work_items", None) or {}).values()):
        if item.future.cancelled():
            item.future = Future()


def local_workers(workers: int) -> int:
    """How many workers `ordered_map` runs on this machine for `workers`: at most one per core this
    process may run on (its CPU affinity: a container's or `taskset`'s, which os.cpu_count() does not
    see), and 1 (this process) for 0 or 1."""
    from llmkit.runtime import worker_count

    return max(1, min(workers, worker_count(None)))


def _bounded(pool, function: Callable[[Item], Result], items: Iterable[Item], workers: int) -> Iterator[Result]:
    """The pool's results in input order, with at most 2 x workers items submitted and not yet taken.

    Every call into the pool runs with Ctrl-C held back (`_ctrl_c_deferred`): a KeyboardInterrupt raised inside
    concurrent.futures, between one of its locks' acquire and the `with` that releases it (threading.Condition's
    __enter__ is Python code, checked for signals after the acquire), leaves that lock held forever; the pool's
    manager thread then blocks on it, and shutdown (the `with` around the pool, or the exit of the interpreter)
    waits for that thread forever."""
    pending: deque = deque()
    try:
        for item in items:
            with _ctrl_c_deferred(), _spawned_with_ctrl_c_blocked():
                pending.append(pool.submit(function, item))
            if len(pending) >= 2 * workers:
                yield _result(pending.popleft(), pool)
        while pending:
            yield _result(pending.popleft(), pool)
    finally:  # the consumer stopped early (an error, a fallback, Ctrl-C): queued items are not started
        if not _a_worker_died(pool):  # (a pool a worker died in fails them all itself; cancelled first, its manager
            with _ctrl_c_deferred():  # thread raised InvalidStateError setting their exception, a traceback on stderr)
                for future in pending:
                    future.cancel()


def _result(future, pool=None):
    """`future.result()`, waited for in short steps so that a Ctrl-C held back during a step ends the wait.
    A process pool whose worker died while it was sending a result never learns it (its reader waits
    for the rest of the message, which the pool's own copy of the pipe's write end keeps open):
    once a dead worker has gone unnoticed for STUCK_AFTER_S, the pool is broken from here."""
    import time
    from concurrent.futures import wait

    dead_since = None
    while True:
        with _ctrl_c_deferred():
            if wait((future,), timeout=0.1).done:
                return future.result()
        if dead_since is None and _a_worker_died(pool):
            dead_since = time.monotonic()
        elif dead_since is not None and time.monotonic() - dead_since > STUCK_AFTER_S:
            _unstick(pool)
            dead_since = float("inf")  # (once)


STUCK_AFTER_S = 2.0  # (a pool notices a dead worker within its next wait, milliseconds)


def _a_worker_died(pool) -> bool:
    """Whether a process of the pool (a process pool's: `_processes`, its own private record) has died."""
    processes = getattr(pool, "_processes", None) or {}
    return any(process.exitcode not in (None, 0) for process in list(processes.values()))


@contextmanager
def _ctrl_c_deferred() -> Iterator[None]:
    """Ctrl-C (and a SIGTERM, which the CLI turns into the same stop) during the block is delivered
    when it ends, at this line instead of inside the pool's locks. In the main thread only (the
    only one a signal's exception can land in), and only for handlers set from Python."""
    import signal
    import threading

    if threading.current_thread() is not threading.main_thread():
        yield
        return
    held: list[int] = []
    installed: dict[int, Any] = {}  # (restored whatever stops the installing: a signal between the two)
    try:
        for number in (signal.SIGINT, signal.SIGTERM):
            handler = signal.getsignal(number)
            if handler is not None:
                installed[number] = handler
                signal.signal(number, lambda signum, frame: held.append(signum))
        yield
    finally:
        for number, handler in installed.items():
            signal.signal(number, handler)
        for number in dict.fromkeys(held):
            signal.raise_signal(number)  # to the handler of before: its exception raised here


@contextmanager
def _spawned_with_ctrl_c_blocked() -> Iterator[None]:
    """A process spawned in the block (a pool starts its workers as items are submitted) starts
    with Ctrl-C and SIGTERM blocked: a signal mask, which fork and exec keep, where a handler would
    be reset. A terminal's Ctrl-C reaches the whole process group, and one that landed in a
    worker's start-up, before `_start_worker` ignores it, killed the worker with a traceback and
    broke the pool, which was then reported as workers that could not start. Blocked, not ignored,
    in this thread: one arriving meanwhile waits here and is delivered when the block ends."""
    import signal
    import threading

    if threading.current_thread() is not threading.main_thread() or not hasattr(signal, "pthread_sigmask"):
        yield
        return
    before = signal.pthread_sigmask(signal.SIG_BLOCK, {signal.SIGINT, signal.SIGTERM})
    try:
        yield
    finally:
        signal.pthread_sigmask(signal.SIG_SETMASK, before)


def _start_worker(initializer: Callable[..., None] | None, initargs: tuple[Any, ...], started=None) -> None:
    """A worker leaves Ctrl-C and SIGTERM to the parent (which stops the pool: one message, not one
    traceback per worker; a worker a group's SIGTERM killed mid-result left the pool's reader waiting
    forever, the command hung after its error line) and ends as soon as the parent does, killed or
    not, instead of finishing its queue.
    It marks `started` (see ordered_map) so that its death later is not taken for a failure to start."""
    import multiprocessing
    import os
    import signal
    import threading

    signal.signal(signal.SIGINT, signal.SIG_IGN)
    signal.signal(signal.SIGTERM, signal.SIG_IGN)
    if hasattr(signal, "pthread_sigmask"):  # spawned with them blocked (_spawned_with_ctrl_c_blocked): ignored now, so a
        # pending one is discarded; unblocked, so that a process this one starts may handle them
        signal.pthread_sigmask(signal.SIG_UNBLOCK, {signal.SIGINT, signal.SIGTERM})
    parent = multiprocessing.parent_process()
    if parent is not None:
        threading.Thread(target=lambda: (parent.join(), os._exit(1)), daemon=True, name="llmkit-parent-watch").start()
    if started is not None:
        started[0] = 1
    if initializer is not None:
        try:
            initializer(*initargs)
        except BaseException:
            if started is not None:
                started[1] = 1  # (a rerun would fail the same way: not a death to continue after)
            raise
