"""The clean stage: read -> normalise and filter (in workers) -> de-duplicate (in order) -> write.

Memory stays bounded: documents stream through in batches, at most 2 x workers batches are in
flight, and only the de-duplication index (a dict entry per kept document for exact dedup; one
64-bit key and 32-bit ordinal per band, in NumPy hash tables, for MinHash LSH) grows with the corpus.
"""

from __future__ import annotations

import shutil
import time
from collections import Counter
from contextlib import closing
from itertools import chain, islice
from pathlib import Path
from typing import Iterator

import numpy as np

from llmkit import artifacts, outputs
from llmkit.console import err, note
from llmkit.corpus.config import CleanConfig
from llmkit.corpus.dedup import Deduplicator
from llmkit.corpus.process import init_worker, process_batch
from llmkit.corpus.sources import ReadOptions, ReadStats, Source, resolve_inputs
from llmkit.corpus.writer import RejectWriter, ShardWriter
from llmkit.errors import UserError
from llmkit import resume
from llmkit.parallel import ordered_map

_BATCH_DOCS = 256
_BATCH_CHARS = 2 << 20


def _batches(sources: list[Source], options: ReadOptions, read_stats: ReadStats) -> Iterator[list[tuple[str, str, str]]]:
    batch: list[tuple[str, str, str]] = []
    chars = 0
    for source in sources:
        for doc_id, label, text in source.labelled(options, read_stats):
            batch.append((doc_id, label, text))
            chars += len(text)
            if len(batch) >= _BATCH_DOCS or chars >= _BATCH_CHARS:
                yield batch
                batch, chars = [], 0
    if batch:
        yield batch


def clean(
    inputs: list[str],
    out: Path | str,
    cfg: CleanConfig | None = None,
    *,
    force: bool = False,
    show_progress: bool = True,
) -> Path:
    """Clean and de-duplicate `inputs` (and `cfg.dataset`) into a corpus artifact at `out`; returns its path."""
    from llmkit.runtime import idle_cores

    cfg = cfg or CleanConfig()
    out = Path(out)
    on_cluster = cfg.execution.executor == "ray"
    # 0: one per core no other program is using (on a Ray cluster: one per CPU of the cluster)
    workers = cfg.workers or (0 if on_cluster else idle_cores())
    read = [*inputs, cfg.dataset]
    outputs.check_output(out, force, inputs=read, writes="corpus")  # first: `-o` naming an input is the problem to report
    sources = resolve_inputs(list(inputs), cfg.dataset, cfg.dataset_config, cfg.split, exclude=out.resolve())
    _note_options_these_inputs_ignore(cfg, sources)
    options = ReadOptions(text_field=cfg.text_field, doc_per=cfg.doc_per, skip_bad_lines=cfg.skip_bad_lines)
    read_stats = ReadStats()
    started = time.perf_counter()

    # format 2: markers append the index's changes (a partial folder of format 1 is started over, not misread)
    # format 3 (2026-12-03): HTML heads, C4's emptied documents, Gopher's top n-gram and a corpus's carried ids changed
    # format 4 (2026-12-05): terminal escapes, the HTML gate, a whole file's BOM and repeated names' labels changed
    # format 5 (2026-12-05): a document C4 empties is c4_no_lines_left (it was "empty")
    # format 6 (2026-12-06): shingles kept combining marks; C4 ended a sentence after a closing quote; Korean's word length
    # format 7 (2026-12-06): a shingle word starts with a letter or number; C4's closers follow CJK marks only
    # format 8 (2026-12-07): --strip-html leaves .txt/.md/.rst as written; a file given twice is read once
    # format 9 (2026-12-07): a Parquet null is a bad record (it was "empty"); --strip-html strips pages and records alone
    identities = input_identities(sources)
    key = resume.digest({"stage": "clean", "format": 9, "config": cfg.hashed(), "inputs": identities})
    with artifacts.create(out, "corpus", force=force, inputs=read, resume_key=key) as build:
        for role, source in _artifact_inputs(inputs):  # a corpus cleaned again: its lineage goes on
            build.add_input(role, source)
        run = _Written(build.dir, cfg, show_progress)
        total = sum(s.size for s in sources) if all(s.size is not None for s in sources) else None
        with _progress(show_progress) as progress:
            task = progress.add_task("cleaning", total=total, kept=run.counts["kept"], completed=run.counts["bytes_in"])
            batches = _batches(sources, options, read_stats)
            if run.done_batches:
                # Finished batches are read (the input position) but not processed again.
                batches = islice(batches, run.done_batches, None)
            # the first batch read before any worker starts: a wrong --text-field is told at once (Ray took ~10 s to start)
            batches = chain(list(islice(batches, 1)), batches)
            execution = cfg.execution
            used = {"workers": workers}  # what ran: --workers 0 on Ray or past the cores settles in ordered_map
            # closed as the loop ends (closing): a failure here closes it while unwinding, which keeps a Ray run's logs
            with closing(ordered_map(process_batch, batches, workers=workers, initializer=init_worker, initargs=(cfg,),
                                     executor=execution.executor, ray_address=execution.ray_address,
                                     on_start=lambda n: used.update(workers=n))) as results:
                for number, batch in enumerate(results, start=run.done_batches):
                    advance = run.take(number, batch)
                    progress.update(task, advance=advance, kept=run.counts["kept"])
            if total is not None:  # (it advances by text read, short of a record file's size by its keys and other fields)
                progress.update(task, completed=total)
        run.close()
        _refuse_inputs_changed_while_read(sources, identities)
        _refuse_nothing_kept(run.counts, run.dropped, sources, cfg)
        elapsed = time.perf_counter() - started
        build.config = cfg.hashed()
        build.seed = cfg.seed if cfg.near_dedup else None  # (only MinHash's permutations are drawn)
        build.runtime = {"workers": used["workers"], **cfg.execution.runtime()}
        build.stats = {
            **run.stats(),
            "sources": [s.label for s in sources[:100]],
            "source_count": len(sources),
            "input_files": _content_hashes(sources),
            "bad_lines_skipped": read_stats.bad_lines_skipped,
            "bad_line_examples": read_stats.bad_line_examples,
            "seconds": round(elapsed, 3),
            "mb_per_s": round((run.counts["bytes_in"] - run.resumed_bytes) / 1e6 / elapsed, 3) if elapsed > 0 else None,
        }
    return out


class _Written:
    """What a clean run has decided and written so far: the shards, the de-duplication index, the
    counts, the rejects; set from the resume marker of an interrupted run, and saved in a new
    marker each time a shard closes."""

    def __init__(self, directory: Path, cfg: CleanConfig, show_progress: bool):
        self.directory = directory
        marker = resume.load(directory)
        self.shards = ShardWriter(directory / "shards", cfg.shard_mb << 20)
        self.dedup = Deduplicator(cfg.bands if cfg.near_dedup else 0)
        self.kept_ids: list[str] = []  # ordinal -> id, only to name `duplicate_of` in the rejects file
        self.dropped: Counter[str] = Counter()
        self.counts = {"docs_in": 0, "bytes_in": 0, "kept": 0, "bytes_out": 0}
        self.done_batches, self.pending_decisions, self.skip_docs = 0, None, 0
        if marker is None:
            shutil.rmtree(directory / "shards", ignore_errors=True)  # a run killed before its first shard closed
            (directory / "rejects.jsonl").unlink(missing_ok=True)
        else:
            state, arrays = marker
            self.done_batches, self.skip_docs = state["batches"], state["docs_of_batch"]
            self.pending_decisions = [tuple(d) for d in state["decisions"]]
            self.counts, self.dropped, self.kept_ids = state["counts"], Counter(state["dropped"]), _decode_ids(arrays)
            self.dedup.replay(arrays, state["dedup_kept"])
            self.shards.resume(state["shards"])
            if show_progress:
                err.print(f"resuming the interrupted run: {len(state['shards'])} shard(s), {self.counts['docs_in']:,} "
                          "documents done", soft_wrap=True, markup=False)
        self.rejects = RejectWriter(directory / "rejects.jsonl", resume_at=marker[0]["rejects_bytes"] if marker else None) \
            if cfg.keep_rejects else None
        self.resumed_bytes = self.counts["bytes_in"]  # read by the interrupted run: not this run's speed
        self.ids_saved = len(self.kept_ids)

    def take(self, number: int, batch) -> int:
        """Batch `number`'s documents de-duplicated and kept or rejected; the input bytes they were."""
        # The batch a shard closed in keeps the decisions made for it (the index already holds them).
        decisions = self.pending_decisions if self.pending_decisions is not None else self.dedup.decide(batch)
        self.pending_decisions = None
        first, self.skip_docs = self.skip_docs, 0
        counts = self.counts
        for j in range(first, len(batch.docs)):
            doc, (reason, duplicate_of) = batch.docs[j], decisions[j]
            counts["docs_in"] += 1
            counts["bytes_in"] += doc.bytes_in
            if reason is None:
                closed = self.shards.add(doc.id, doc.text, doc.source, doc.bytes_out)
                if self.rejects is not None:
                    self.kept_ids.append(doc.id)
                counts["kept"] += 1
                counts["bytes_out"] += doc.bytes_out
                if closed:
                    self._checkpoint(number, j + 1, decisions)
                continue
            self.dropped[reason] += 1
            if self.rejects is not None:
                of = self.kept_ids[duplicate_of] if duplicate_of is not None else None
                self.rejects.add(doc.id, doc.source, reason, doc.text, of)
        return sum(d.bytes_in for d in batch.docs[first:])

    def _checkpoint(self, batches_before: int, docs_of_batch: int, decisions) -> None:
        """Everything up to this closed shard is on disk: say so (the rerun's starting point). The
        index and the kept ids go in as what changed since the last marker: each is written once."""
        state = {"batches": batches_before, "docs_of_batch": docs_of_batch, "decisions": decisions,
                 "counts": self.counts, "dropped": dict(self.dropped), "dedup_kept": self.dedup.kept,
                 "shards": list(self.shards.shards), "rejects_bytes": self.rejects.offset() if self.rejects is not None else 0}
        resume.save(self.directory, state, {**self.dedup.changes(), **_encode_ids(self.kept_ids[self.ids_saved:])}, append=True)
        self.ids_saved = len(self.kept_ids)

    def close(self) -> None:
        self.shards.close()
        if self.rejects is not None:
            self.rejects.close()

    def stats(self) -> dict:
        """The corpus's stats of what was kept and dropped."""
        counts, dedup = self.counts, self.dedup
        return {
            "documents": counts["kept"],
            "bytes": counts["bytes_out"],
            "documents_in": counts["docs_in"],
            "bytes_in": counts["bytes_in"],
            "dropped": dict(self.dropped.most_common()),
            "duplicate_clusters": len(dedup.cluster_sizes),
            "largest_duplicate_cluster": (max(dedup.cluster_sizes.values()) + 1) if dedup.cluster_sizes else 0,
            "shards": len(self.shards.shards),
        }


def _note_options_these_inputs_ignore(cfg: CleanConfig, sources) -> None:
    """Options that only some kinds of input read, given for inputs of another kind: said, not refused
    (they are recorded, and the same command may be run on other inputs)."""
    if cfg.doc_per != "file" and not any(source.plain_text for source in sources):
        note(f"--doc-per {cfg.doc_per} splits plain-text files; these inputs come as documents already, so it "
             "changes nothing here (it is still recorded)")
    from llmkit.corpus.normalize import is_page, may_hold_html

    pages = [source.label for source in sources if source.plain_text and is_page(source.label)]
    if pages and not cfg.strip_html:  # (their tags and scripts were kept as text, unsaid)
        note(f"{len(pages)} HTML file(s) are read as written, markup included ({pages[0]}{', ...' if len(pages) > 1 else ''}): "
             "pass --strip-html for their visible text")
    if cfg.strip_html:
        plain = [source.label for source in sources if not may_hold_html(source.label)]
        if plain:
            note(f"--strip-html leaves {len(plain)} plain-text file(s) as written ({plain[0]}{', ...' if len(plain) > 1 else ''}): "
                 "their angle brackets are text; it strips .html/.htm files and records (a page saved as .txt is stripped "
                 "once named .html)")
    if all(source.plain_text for source in sources):
        if cfg.text_field is not None:
            note(f"--text-field {cfg.text_field} names a field of JSONL, CSV or Parquet records; these inputs are plain "
                 "text, so it changes nothing here (it is still recorded)")
        if cfg.skip_bad_lines and cfg.doc_per == "file":
            note("--skip-bad-lines skips records, and lines under --doc-per line or blank-line; these inputs are whole "
                 "plain-text files, so it changes nothing here (it is still recorded)")


def _refuse_nothing_kept(counts: dict[str, int], dropped: Counter[str], sources, cfg: CleanConfig) -> None:
    """A corpus of no documents is no artifact: why there is none, in one line."""
    if counts["docs_in"] == 0 or counts["bytes_in"] == 0:  # (an empty file is one empty document)
        raise UserError(f"no text found in {_describe(sources)}: the input is empty; check the files")
    if counts["kept"] == 0 and set(dropped) == {"empty"}:
        raise UserError(f"no text found in {_describe(sources)}: every document is empty or blank"
                        f"{' once its HTML is stripped' if cfg.strip_html else ''}; check the files")
    if counts["kept"] == 0:
        top = ", ".join(f"{reason}: {count}" for reason, count in dropped.most_common(3))
        commonest = dropped.most_common(1)[0][0]
        if commonest == "language":  # (the web preset's en dropped a Chinese novel, and the fix went unsaid)
            preset = " (the web preset's)" if cfg.preset == "web" and cfg.languages == ["en"] else ""
            others = ", ".join([code for code in ("en", "zh", "de", "fr") if code not in cfg.languages][:2])
            fix = (f"no document was detected as {','.join(cfg.languages)}{preset}: pass --languages with the corpus's own "
                   f"codes (such as {others}), or check the input")
        elif commonest == "gopher_long_doc" and cfg.doc_per == "file" and any(s.plain_text for s in sources):
            fix = ("a whole plain-text file is one document under --doc-per file: pass --doc-per blank-line or line to "
                   "split it, or raise --max-words")
        else:
            fix = "loosen those rules (see llmkit clean --help) or check the input"
        what = "the one document was" if counts['docs_in'] == 1 else f"all {counts['docs_in']} documents were"
        raise UserError(f"{what} dropped ({top}); {fix}")


def _encode_ids(ids: list[str]) -> dict[str, np.ndarray]:
    """Document ids as arrays (UTF-8 bytes and lengths) that `resume` can append to and concatenate."""
    encoded = [i.encode() for i in ids]
    return {"kept_id_bytes": np.frombuffer(b"".join(encoded), dtype=np.uint8),
            "kept_id_lengths": np.array([len(e) for e in encoded], dtype=np.int64)}


def _decode_ids(arrays: dict[str, np.ndarray]) -> list[str]:
    data = arrays["kept_id_bytes"].tobytes()
    ends = np.cumsum(arrays["kept_id_lengths"]).tolist()
    return [data[start:end].decode() for start, end in zip([0, *ends[:-1]], ends)]


def _artifact_inputs(inputs: list[str]) -> list[tuple[str, artifacts.Artifact]]:
    """The corpus artifacts among the inputs, with their roles: corpus, corpus-2, ..."""
    found = [artifacts.load(arg, kind="corpus") for arg in inputs
             if not arg.startswith("builtin:") and (Path(arg) / artifacts.MANIFEST).is_file()]
    return [("corpus" if i == 0 else f"corpus-{i + 1}", art) for i, art in enumerate(found)]


def _describe(sources: list[Source]) -> str:
    labels = [s.label for s in sources]
    return ", ".join(labels[:3]) + (f" and {len(labels) - 3} more" if len(labels) > 3 else "")


def _progress(enabled: bool):
    from rich.progress import TextColumn, TransferSpeedColumn

    from llmkit.console import progress

    # Progress counts input bytes, so the speed column reads in MB/s.
    bar = progress(TransferSpeedColumn(), TextColumn("{task.fields[kept]} kept"))
    if not enabled:
        bar.disable = True
    return bar


def _refuse_inputs_changed_while_read(sources, identities: list) -> None:
    """An input file written to, cut or replaced while the stage read it: the corpus holds part of
    one version and part of another (a file truncated mid-read gave half the data, exit 0, and no
    manifest records a raw file's hash to tell). Told by its size, modification time and inode
    (resume.file_identity's, less the change time, which a chmod, a hard link or a restored access
    time moves without touching a byte). A `--dataset`'s files are not asked again."""
    fields = {1: "size", 2: "modification time", 4: "file (another inode: replaced)"}
    for source, before, now in zip(sources, identities, input_identities(sources)):
        if source.identity is not None or len(before) != 5 or len(now) != 5:
            continue
        changed = [what for index, what in fields.items() if before[index] != now[index]]
        if changed:
            raise UserError(f"{source.label} changed while clean read it (its {' and '.join(changed)}); run clean again "
                            "once it is written")


def _content_hashes(sources, limit: int = 100) -> list[dict[str, str]]:
    """Each file read (the first `limit`) by its source label (unique: two data.txt in two folders are
    a/data.txt and b/data.txt) and SHA-256, as tokenizer train records its text files: which bytes a
    corpus came from, where its labels name a path only. (A corpus cleaned again is an input artifact
    with its fingerprint; a data set, local ones too, is named in `sources`, not hashed.) Read again
    after the run: about 0.03 s for 37 MB from the page cache, a second read from disk for files past it."""
    from llmkit.artifacts import sha256_file

    files: dict[Path, str] = {}
    for source in sources:
        if source.path is not None and not source.carries_ids:
            files.setdefault(Path(source.path), source.label)
    return [{"name": label, "sha256": sha256_file(path)} for path, label in list(files.items())[:limit] if path.is_file()]


def input_identities(sources) -> list:
    """What a resumed run must have been reading: each file by its real path, size and modification
    time (its label may be its name alone), a data set by its own identity (Source.identity), anything
    else by its label."""
    return [s.identity if s.identity is not None else resume.file_identity(str(s.path or s.label), s.size)
            for s in sources]
