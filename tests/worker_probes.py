"""Functions that tests run in worker processes (torchrun's, imported by name from llmkit.train.worker; a
spawned pool's, which must import them), kept out of the test modules the workers would otherwise import."""

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


def large_result_or_death(i: int) -> bytes:
    """16 MB per item (far more than a pipe holds: its worker blocks writing it until the parent reads), but
    item 5, whose worker dies a moment in, as the out-of-memory killer ends a process."""
    import os
    import time

    if i == 5:
        time.sleep(0.05)
        os._exit(1)
    return bytes(16 << 20)


def run_until_a_worker_dies(function=None, items: int = 400) -> None:
    """ordered_map over large_result_or_death (or `function`) on two workers: prints how it ended."""
    from llmkit.errors import WorkerDied
    from llmkit.parallel import ordered_map

    try:
        for _ in ordered_map(function or large_result_or_death, range(items), workers=2):
            pass
    except WorkerDied as exc:
        print("died:", exc)


def raise_plain(**_) -> None:
    raise RuntimeError("a plain error")


def raise_user_error(**_) -> None:
    from llmkit.errors import UserError

    raise UserError("a user error")


def lose_the_connection(**_) -> None:
    raise RuntimeError("[../third_party/gloo/gloo/transport/tcp/pair.cc:534] Connection closed by peer [127.0.0.1]:29500")


def large_result_dying_mid_send(i: int) -> bytes:
    """64 MB per item; item 3's worker dies while it is sending its result (as the out-of-memory killer
    may, the result and its pickled copy held): a watcher thread ends it inside the pipe's write."""
    import os
    import sys
    import threading
    import time

    if i == 3:
        main = threading.main_thread().ident

        def watch() -> None:
            while True:
                frame, names = sys._current_frames().get(main), []
                while frame is not None:
                    names.append(frame.f_code.co_name)
                    frame = frame.f_back
                if "_send_bytes" in names:
                    time.sleep(0.002)
                    os._exit(1)
                time.sleep(0.0005)

        threading.Thread(target=watch, daemon=True).start()
    return bytes(64 << 20)


def run_until_a_worker_dies_mid_send() -> None:
    run_until_a_worker_dies(large_result_dying_mid_send, 12)


def interrupt_after_a_worker_dies_mid_send() -> None:
    """As run_until_a_worker_dies_mid_send, with a Ctrl-C half a second after the death (before the wait
    gives up on the pool): prints how it ended."""
    import os
    import signal
    import threading
    import time

    from llmkit.errors import WorkerDied
    from llmkit.parallel import ordered_map

    def watch() -> None:  # a zombie child is the dead worker
        me = os.getpid()
        while True:
            for task in os.listdir(f"/proc/{me}/task"):
                try:
                    children = open(f"/proc/{me}/task/{task}/children").read().split()
                    if any(open(f"/proc/{child}/stat").read().split(") ")[1][0] == "Z" for child in children):
                        time.sleep(0.5)
                        os.kill(me, signal.SIGINT)
                        return
                except OSError:
                    pass
            time.sleep(0.01)

    threading.Thread(target=watch, daemon=True).start()
    try:
        for _ in ordered_map(large_result_dying_mid_send, range(12), workers=2):
            pass
    except (KeyboardInterrupt, WorkerDied) as exc:
        print("ended:", type(exc).__name__)
