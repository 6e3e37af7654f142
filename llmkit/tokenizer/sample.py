"""The text `llmkit tokenizer train` trains on: a sample drawn across the whole input, and a held-out slice.

The input is cut into read tasks that depend on it alone (a corpus's Parquet row groups, text
files in ~64 MB ranges starting at a paragraph). Each task reads its documents, cuts long ones
into pieces (`split_pieces`), and draws for every piece, from a generator seeded by (--seed,
task number), whether it is a training candidate (probability `keep`) and whether it is a
held-out candidate (probability 1/--heldout-every). Only candidates leave the task, so a worker
sends back about `keep` of what it read. The driver then walks the tasks' results in task order,
filling the held-out slice up to its cap and the sample up to --sample-bytes / --max-docs.

Tasks run through llmkit.parallel.ordered_map: in this process, on local processes, or on a Ray
cluster's actors that read the input themselves (so it must be on storage they share). Which
task a worker ran never reaches the draws, so the sample, and the tokenizer, are the same on
every executor and for any number of workers. Memory is a few tasks' candidates plus the sample
itself (at most --sample-bytes), whatever the size of the input.

Each task's candidates are appended to `sample.jsonl` in the stage's partial output folder, with
a completion marker (llmkit.resume) after each group of tasks: a rerun after a crash replays the finished tasks
from that file instead of reading their input again, then goes on, and draws the same sample.
"""

from __future__ import annotations

import json
import os
import re
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from llmkit import artifacts, resume
from llmkit.data.corpus import (RECORD_SUFFIXES, RowGroup, TextRange, corpus_row_groups, file_format, read_row_group_texts,
                                 read_text_range, text_file_ranges)
from llmkit.errors import UsageError, UserError
from llmkit.executor import Execution
from llmkit.parallel import ordered_map

PIECE_CHARS = 8192
SAMPLE_LOG = "sample.jsonl"  # in the partial output only: the finished tasks' candidates


def split_pieces(text: str, size: int = PIECE_CHARS) -> list[str]:
    """A long document in pieces of about `size` characters, cut after a run of newlines (in a
    line longer than that, before a space between two words).

    Sampling and holding out work on pieces, so a corpus of a few big files (`llmkit clean`'s
    one document per file) still gets a held-out slice. Cutting after the whole newline run
    keeps the pre-tokens on both sides of the cut as they are in the whole text.
    """
    if len(text) <= 2 * size:
        return [text]
    pieces, start = [], 0
    while len(text) - start > 2 * size:
        cut = text.find("\n", start + size, start + 2 * size)
        if cut >= 0:
            cut = _after_newline_run(text, cut)
        else:  # a long line: cut before a lone space between words, where a word's pre-token starts anyway
            space = _LONE_SPACE.search(text, start + size, start + 2 * size)
            if space is None:
                cut = text.find("\n", start + 2 * size)
                if cut < 0:
                    break
                cut = _after_newline_run(text, cut)
            else:
                cut = space.start()
        pieces.append(text[start:cut])
        start = cut
    pieces.append(text[start:])
    return pieces


def _after_newline_run(text: str, newline: int) -> int:
    r"""Where the newline pre-token holding text[newline] ends: the pattern's `\s*[\r\n]+` takes
    whitespace-only lines with it ("\n  \n" is one pre-token), so the cut goes after the last line
    break of the whitespace run, not after the first."""
    end = _WHITESPACE_RUN.match(text, newline).end()
    return max(text.rfind("\n", newline, end), text.rfind("\r", newline, end)) + 1


_WHITESPACE_RUN = re.compile(r"\s*")
# A space with a non-space on each side: in GPT-2's pre-tokenizer pattern the word after it starts
# with it (" word"), so cutting there leaves every pre-token as in the whole text.
_LONE_SPACE = re.compile(r"(?<=\S) (?=\S)")


@dataclass
class Source:
    """The training input: one corpus artifact, or plain text files, as read tasks."""

    tasks: list[RowGroup | TextRange]
    total_bytes: int | None
    corpus: artifacts.Artifact | None
    described: dict


def open_source(inputs: Sequence[Path]) -> Source:
    if not inputs:
        raise UserError("no input given; pass a corpus artifact (llmkit clean) or UTF-8 text files")
    inputs = [Path(p) for p in inputs]
    if len(inputs) == 1 and inputs[0].is_dir():
        if not (inputs[0] / artifacts.MANIFEST).is_file():
            raise UserError(f"{inputs[0]} is a folder, not a corpus artifact; make a corpus of its files first (llmkit clean "
                            f"{inputs[0]} -o CORPUS), then train on CORPUS")
        corpus = artifacts.load(inputs[0], kind="corpus")
        total = corpus.stats.get("bytes")
        return Source(corpus_row_groups(corpus), int(total) if total else None, corpus, {"kind": "corpus"})
    seen: dict[tuple[int, int], Path] = {}  # (device, inode): a symbolic or hard link is its file
    for path in inputs:
        if path.is_dir():
            raise UserError(f"{path} is a directory; pass one corpus artifact, or text files only")
        if not path.is_file():
            if artifacts.unexpanded_pattern(path):
                raise UserError(f"no file matches {path} (tokenizer train expands no pattern: the shell does, where it is "
                                "unquoted and matches something); pass a corpus artifact or UTF-8 text files")
            raise UserError(f"no such file or artifact: {path}; pass a corpus artifact or UTF-8 text files")
        if file_format(path)[1] is not None:  # read as text, its compressed bytes are "not UTF-8"
            raise UserError(f"{path} is compressed; tokenizer train reads plain text files: make a corpus of it first "
                            f"(llmkit clean {path} -o CORPUS, which reads .gz and .zst), then train on CORPUS")
        if file_format(path)[0] in RECORD_SUFFIXES:  # read as plain text, its JSON or CSV syntax would be learnt
            raise UserError(f"{path} holds records, not plain text; make a corpus of it first (llmkit clean {path} -o CORPUS), "
                            "then train on CORPUS")
        status = path.stat()
        first = seen.setdefault((status.st_dev, status.st_ino), path)
        if first is not path:  # (overlapping globs, a link: its text would weigh twice in the merges)
            named = f"{path} is given twice" if str(first) == str(path) else f"{path} and {first} are the same file"
            raise UsageError(f"{named}; give each file once")
    # Files are identified by name and content hash, never by absolute path (fingerprints move).
    described = {"kind": "text_files", "files": [{"name": artifacts.storable_name(p.name), "sha256": artifacts.sha256_file(p)}
                                               for p in inputs]}
    return Source(text_file_ranges(inputs), sum(p.stat().st_size for p in inputs), None, described)


@dataclass(frozen=True)
class Draw:
    """What every task needs to draw its candidates."""

    seed: int
    keep: float  # a piece's chance of being a training candidate
    heldout: float  # a piece's chance of being a held-out candidate


@dataclass
class Candidates:
    """The pieces of one task that may be trained on or held out, in the task's order."""

    pieces: list[str]
    sizes: list[int]  # UTF-8 bytes of each piece
    train: list[bool]
    heldout: list[bool]
    read_bytes: int  # every byte the task read, for the progress bar


def draw_candidates(job: tuple[int, RowGroup | TextRange, Draw]) -> Candidates:
    index, task, draw = job
    texts = read_row_group_texts(task) if isinstance(task, RowGroup) else read_text_range(task)
    pieces = [piece for text in texts if text for piece in split_pieces(text)]
    rng = np.random.Generator(np.random.PCG64([draw.seed, index]))
    draws = rng.random((len(pieces), 2))
    train, heldout = draws[:, 0] < draw.keep, draws[:, 1] < draw.heldout
    chosen = np.flatnonzero(train | heldout).tolist()
    sizes = [len(pieces[i].encode("utf-8")) for i in chosen]
    read = task.end - task.start if isinstance(task, TextRange) else sum(len(t.encode("utf-8")) for t in texts)
    return Candidates([pieces[i] for i in chosen], sizes, train[chosen].tolist(), heldout[chosen].tolist(), read)


# Small read tasks (many small files) travel together, up to this many bytes: one dispatch, one
# log write and one marker for all of them (5,000 files of 220 bytes, one task each, took 15x the
# time of the same text in one file). Each task keeps its own draws, so grouping changes no sample.
GROUP_BYTES = 16 << 20


def _task_bytes(task: RowGroup | TextRange) -> int:
    return task.end - task.start if isinstance(task, TextRange) else task.bytes


def group_tasks(jobs: Sequence[tuple], target_bytes: int) -> Iterator[list[tuple]]:
    """Consecutive jobs in groups of about `target_bytes` (a big task alone); order kept."""
    group, size = [], 0
    for job in jobs:
        group.append(job)
        size += _task_bytes(job[1])
        if size >= target_bytes:
            yield group
            group, size = [], 0
    if group:
        yield group


def draw_group(jobs: list[tuple[int, RowGroup | TextRange, Draw]]) -> list[Candidates]:
    return [draw_candidates(job) for job in jobs]


class Sampler:
    """Walks the tasks' candidates in order into the training sample and the held-out slice.

    A held-out candidate is held out while the slice is under --heldout-max-bytes; a training
    candidate is trained on until --max-docs is reached. With --sample-bytes every piece is a
    training candidate with probability --sample-bytes / input bytes and the whole input is read,
    so every part of it is sampled at the same rate (stopping once the sample held --sample-bytes
    left the end of the input out: drawn at 1.1 times the rate, the last 9 % went unread). Only
    where the input's size is unknown does the sample stop at --sample-bytes. Once the sample is
    complete, reading goes on only until the slice holds 1/--heldout-every of the sample's bytes.
    """

    def __init__(self, config, total_bytes: int | None):
        self.config = config
        self.keep = 1.0
        self.stop_bytes = config.sample_bytes  # where the draw's rate cannot follow the input's size
        if config.sample_bytes and total_bytes:
            self.keep = min(1.0, config.sample_bytes / total_bytes)
            self.stop_bytes = None
        self.heldout: list[str] = []
        self.heldout_bytes = 0
        # The first training pieces, to measure on when the input is too small to hold any out.
        self.first_trained: list[str] = []
        self.docs = self.bytes = 0
        self.workers: int | None = None  # how many read and sampled (None: this run read nothing itself)
        self.tasks_read = 0  # the input's tasks (row groups, text ranges) whose pieces were taken, in order

    def full(self) -> bool:
        c = self.config
        return bool((c.max_docs and self.docs >= c.max_docs) or (self.stop_bytes and self.bytes >= self.stop_bytes))

    def heldout_target(self) -> int:
        return min(self.config.heldout_max_bytes, max(1, self.bytes // self.config.heldout_every))

    def done(self) -> bool:
        return self.full() and self.heldout_bytes >= self.heldout_target()

    def training_texts(self, source: Source, execution: Execution, workers: int, on_read,
                       folder: Path | None = None) -> Iterator[str]:
        """The training pieces in order; `on_read(bytes)` after each task. With `folder` (the partial
        output), finished tasks are logged there and a rerun continues after them."""
        done_tasks, log = 0, None
        if folder is not None:
            done_tasks = yield from self._replay(folder, on_read)
            self.tasks_read = done_tasks
            if self.done():
                return
            log = open(folder / SAMPLE_LOG, "ab")
        draw = Draw(self.config.seed, self.keep, 1.0 / self.config.heldout_every)
        jobs = [(index, source.tasks[index], draw) for index in range(done_tasks, len(source.tasks))]
        target = min(GROUP_BYTES, (source.total_bytes or 0) // (4 * max(workers, 1)))
        results = ordered_map(draw_group, group_tasks(jobs, target), workers=workers, executor=execution.executor,
                              ray_address=execution.ray_address, on_start=lambda n: setattr(self, "workers", n))
        number = done_tasks
        try:
            for group in results:
                number += len(group)
                if log is not None:
                    for result in group:  # vars, not asdict: asdict deep-copies every piece (a third of the sampling time)
                        log.write(json.dumps(vars(result), ensure_ascii=False).encode() + b"\n")
                    log.flush()
                    os.fsync(log.fileno())  # the marker must never count bytes a crash of the machine could lose
                    resume.save(folder, {"tasks": number, "log_bytes": log.tell()}, {})
                for result in group:
                    self.tasks_read += 1
                    yield from self._take(result)
                    on_read(result.read_bytes)
                    if self.done():
                        return
        finally:
            results.close()  # stops the workers still reading tasks that are no longer needed
            if log is not None:
                log.close()

    def _replay(self, folder: Path, on_read) -> Iterator[str]:
        """The tasks an interrupted run finished, from its log; returns how many."""
        marker = resume.load(folder)
        log = folder / SAMPLE_LOG
        if marker is None:
            log.unlink(missing_ok=True)
            return 0
        state, _ = marker
        from llmkit.console import err

        if not log.is_file() or log.stat().st_size < state["log_bytes"]:
            # a log shorter than its marker says (written by a version that did not fsync it): start over
            err.print("the interrupted run's sample log is incomplete; reading the input again", soft_wrap=True, markup=False)
            log.unlink(missing_ok=True)
            resume.remove(folder)
            return 0
        err.print(f"resuming the interrupted run: {state['tasks']:,} read task(s) done", soft_wrap=True, markup=False)
        with open(log, "r+b") as handle:
            handle.truncate(state["log_bytes"])  # a task written after the last marker is read again
            handle.seek(0)
            for line in handle:
                result = Candidates(**json.loads(line))
                yield from self._take(result)
                on_read(result.read_bytes)
                if self.done():
                    break
        return state["tasks"]

    def _take(self, result: Candidates) -> Iterator[str]:
        cap = self.config.heldout_max_bytes
        for text, size, train, held in zip(result.pieces, result.sizes, result.train, result.heldout):
            if self.full():
                if self.done():
                    return
                if held:
                    self._hold_out(text, size)
                continue
            if held and self.heldout_bytes < cap:
                self._hold_out(text, size)
            elif train:
                self.docs += 1
                self.bytes += size
                if self.bytes <= cap:
                    self.first_trained.append(text)
                yield text

    def _hold_out(self, text: str, size: int) -> None:
        self.heldout.append(text)
        self.heldout_bytes += size
