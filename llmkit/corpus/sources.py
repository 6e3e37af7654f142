"""Where documents come from: files, folders, `datasets` and the built-in corpus.

Every input is checked before any work starts (missing paths, empty folders, unknown
`builtin:` names), then read as a stream: one document at a time, so memory does not grow
with the input. A bad line fails with `file:line`, unless `--skip-bad-lines` says to go on.

Each document gets an id `<source>:<where>` (line number, row number, topic) and a `source`
label that never holds an absolute path, so the output does not depend on where the input lives.
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path
from typing import Callable, Iterator, Optional

from llmkit.artifacts import MANIFEST, dangling_link, storable_name, unexpanded_pattern
from llmkit.corpus.dataset_source import dataset_source, saved_dataset
from llmkit.corpus.reading import ReadOptions, ReadStats, Source, folder_files, text_reader
from llmkit.corpus.record_files import csv_reader, json_reader, parquet_batches, parquet_reader
from llmkit.data.corpus import RECORD_SUFFIXES, file_format
from llmkit.errors import UserError

__all__ = ["BUILTIN_PREFIX", "ReadOptions", "ReadStats", "Source", "resolve_inputs"]

BUILTIN_PREFIX = "builtin:"


def _artifact_kind(path: Path) -> str:
    from llmkit import artifacts

    return artifacts.load(path).kind


def _label_for(path: Path, root: Optional[Path] = None) -> str:
    """A label (the hashed `source` and `id` columns) from the input alone, whatever folder the
    command ran in and however the path was typed: a file's name, or a folder's name and the path
    below it (a name two inputs share gets #2, #3, ... in input order: _make_labels_unique)."""
    if root is not None:
        return storable_name(f"{Path(os.path.abspath(root)).name}/{path.relative_to(root).as_posix()}")
    return storable_name(path.name)


def _distinct_name(path: Path, inputs: list[str]) -> str:
    """`path`'s name, with as many folders above it as it takes to tell it from the other inputs'."""
    others = [Path(os.path.abspath(arg)).parts for arg in inputs if not arg.startswith(BUILTIN_PREFIX)]
    others = [parts for parts in others if parts != path.parts]
    for depth in range(1, len(path.parts)):
        tail = path.parts[-depth:]
        if all(parts[-depth:] != tail for parts in others):
            return "/".join(tail)
    return path.as_posix().lstrip("/")


def resolve_inputs(
    inputs: list[str],
    dataset: Optional[str] = None,
    dataset_config: Optional[str] = None,
    split: str = "train",
    exclude: Optional[Path] = None,
) -> list[Source]:
    """Check every input and list its sources; `exclude` (the output folder) is never read."""
    if not inputs and not dataset:
        raise UserError("no input given; pass files or folders (or builtin:python-docs), or --dataset NAME")
    # (label, what makes the source from its label): the labels made unique before any reader holds one
    planned: list[_Planned] = []
    read_from: dict[str, str] = {}  # a file's real path -> the input it is read from (a file given twice is read once)
    twice: list[str] = []

    def plan_file(path: Path, label: str, given_as: str) -> None:
        real = os.path.realpath(path)
        if real in read_from:
            twice.append(f"{given_as} (also {read_from[real]})" if given_as != read_from[real] else given_as)
            return
        read_from[real] = given_as
        planned.append(_Planned(label, lambda final: _file_source(path, final)))

    for arg in inputs:
        if arg.startswith(BUILTIN_PREFIX):
            source = _builtin_source(arg[len(BUILTIN_PREFIX) :])
            planned.append(_Planned(source.label, lambda final, source=source: source))  # (its reader names no label)
            continue
        path = Path(os.path.abspath(arg))  # what a worker opens: on a Ray cluster, not in the driver's folder
        if not path.exists():
            if unexpanded_pattern(arg):
                raise UserError(f"no file matches {arg} (clean takes files and folders, and expands no pattern: the shell "
                                "does, where it is unquoted and matches something); pass the files or their folder")
            if arg == "-":
                raise UserError("clean reads files, not standard input (-); write the text to a file and pass its path")
            raise UserError(f"input not found: {arg}{dangling_link(path)}; check the path")
        if path.is_dir() and (path / MANIFEST).is_file():  # an artifact: its data, not its manifest
            kind = _artifact_kind(path)
            if kind != "corpus":
                raise UserError(f"{arg} is a {kind} artifact; clean reads text: files, folders or a corpus artifact")
            from llmkit.data.corpus import corpus_shards

            # beside other inputs, its documents' ids and sources are prefixed with its name: two
            # corpora made from files of the same name (or a file of that name) stay apart; two
            # corpora of one name (runs/a/corpus, runs/b/corpus) by the folders above it
            prefix = f"{storable_name(_distinct_name(path, inputs))}/" if len(inputs) > 1 or dataset else ""
            planned.extend(_Planned(_label_for(p, path), lambda final, p=p, prefix=prefix: _corpus_shard_source(p, final, prefix))
                           for p in corpus_shards(path))
            continue
        if path.is_dir() and saved_dataset(path) is not None:  # its JSON files are metadata, its data Arrow files
            raise UserError(f"{arg} is a data set written by save_to_disk; read it with --dataset {arg}")
        if path.is_dir():
            found = folder_files(path)
            files, unread = found.readable, found.other
            _note_links(arg, path, found.back_up, found.out)
            if exclude is not None:  # `llmkit clean data -o data/corpus --force` must not read its old output
                files = [p for p in files if not p.resolve().is_relative_to(exclude)]
            files = _outside_artifacts(files, path, arg)
            # A data folder's README describes the data beside or below it (a Hub repository's card above its
            # data/ folder); it is not part of it (other .md files are read, and so is a README over no data files)
            data_folders = {folder for p in files if file_format(p)[0] in RECORD_SUFFIXES
                            for folder in (p.parent, *p.parent.parents) if folder.is_relative_to(path)}
            files = [p for p in files if not (file_format(p)[0] in (".md", ".rst") and p.name.upper().startswith("README")
                                              and p.parent in data_folders)]
            if not files:
                raise UserError(
                    f"folder {arg} holds no readable files; expected .txt, .md, .jsonl, .json, .csv or .parquet "
                    "(optionally .gz/.zst compressed)"
                )
            if unread:
                _note_unread(arg, [Path(os.path.join(arg, p.relative_to(path).as_posix())) for p in unread])
            for p in files:
                plan_file(p, _label_for(p, path), os.path.join(arg, p.relative_to(path).as_posix()))
        else:
            plan_file(path, _label_for(path), arg)
    if twice:
        from llmkit.console import note

        note(f"read once: {', '.join(twice[:3])}{', ...' if len(twice) > 3 else ''} given again (the same file: its "
             "documents would all be exact duplicates)")
    _make_labels_unique(planned)
    sources = [entry.make(entry.label) for entry in planned]
    if dataset:
        sources.append(dataset_source(dataset, dataset_config, split))
    return sources


@dataclass
class _Planned:
    label: str
    make: Callable[[str], Source]


def _note_links(arg: str, root: Path, back_up: list[Path], out: list[Path]) -> None:
    """Linked folders a folder input holds: those leading back to it or above it left out (they read
    everything beside the input), those leading out of it followed; each said."""
    from llmkit.console import note

    def shown(links: list[Path]) -> str:
        first = links[0]
        return f"{first.relative_to(root).as_posix()} -> {os.path.realpath(first)}" + (", ..." if len(links) > 1 else "")

    if back_up:
        note(f"{arg}: left out {len(back_up)} linked folder(s) leading back to it or above it ({shown(back_up)}): read, "
             "they would read the folder again, or everything beside it")
    if out:
        note(f"{arg}: read {len(out)} linked folder(s) out of it ({shown(out)})")


def _note_unread(arg: str, unread: list[Path]) -> None:
    """Files of a folder clean does not read (a .log, a .tsv, no suffix), counted by suffix: left out, said."""
    from collections import Counter

    from llmkit.console import note

    counts = Counter("".join(p.suffixes[-1:]).lower() or "no suffix" for p in unread)
    shown = ", ".join(f"{suffix} ({count})" for suffix, count in sorted(counts.items(), key=lambda kv: (-kv[1], kv[0]))[:5])
    note(f"{arg}: left out {len(unread)} file{'' if len(unread) == 1 else 's'} clean does not read ({shown}"
         f"{', ...' if len(counts) > 5 else ''}; e.g. {unread[0]}): it reads .txt, .md, .rst, .html, .jsonl, .json, .csv "
         "and .parquet, .gz/.zst compressed or not")


def _outside_artifacts(files: list[Path], root: Path, arg: str) -> list[Path]:
    """A folder's files without those of the llmkit artifacts inside it (a corpus made there
    earlier): their manifest is no data and their shards would be read again as more of it. A note
    names what was left out; an artifact is read as an input of its own."""
    from llmkit import artifacts

    inside = sorted({p.parent for p in files if p.name == artifacts.MANIFEST and artifacts.manifest_kind(p.parent)})
    if not inside:
        return files
    from llmkit.console import note

    shown = ", ".join(str(folder.relative_to(root)) for folder in inside[:3]) + (", ..." if len(inside) > 3 else "")
    note(f"{arg} holds {len(inside)} llmkit artifact folder(s) ({shown}), left out; give an artifact as an input "
         "of its own to read it")
    return [p for p in files if not any(p.is_relative_to(folder) for folder in inside)]


def _make_labels_unique(sources: list[Source]) -> None:
    """The second `data.txt` becomes `data.txt#2` (#3, ...: the first number no input is labelled with)."""
    used = {source.label for source in sources}
    seen: set[str] = set()
    numbers: dict[str, int] = {}  # a label -> the number its next copy tries first
    for source in sources:
        if source.label in seen:
            label, number = source.label, numbers.get(source.label, 2)
            while f"{label}#{number}" in used:
                number += 1
            numbers[label] = number + 1
            source.label = f"{label}#{number}"
            used.add(source.label)
        seen.add(source.label)


def _builtin_source(name: str) -> Source:
    from llmkit.corpus import builtin

    if name != builtin.NAME:
        raise UserError(f"unknown built-in corpus {BUILTIN_PREFIX}{name}; the built-in corpus is {BUILTIN_PREFIX}{builtin.NAME}")

    def read(options: ReadOptions, stats: ReadStats) -> Iterator[tuple[str, str]]:
        yield from builtin.python_docs()

    return Source(label=f"{BUILTIN_PREFIX}{builtin.NAME}", size=None, read=read)


def _corpus_shard_source(path: Path, label: str, prefix: str = "") -> Source:
    """A shard of a corpus artifact: its documents with the id and source they carry, after
    `prefix` (a shard without those columns, not written by llmkit, is read as any Parquet file)."""
    import pyarrow.parquet as pq

    try:
        names = set(pq.read_schema(path).names)
    except Exception:  # (the Parquet reader names what is wrong with it)
        names = set()
    if not {"id", "text", "source"} <= names:
        return _file_source(path, label)

    def read(options: ReadOptions, stats: ReadStats) -> Iterator[tuple[str, str, str]]:
        from llmkit.artifacts import checked_as_read

        with checked_as_read(path):  # (an edit of its size was cleaned under the corpus's recorded fingerprint)
            yield from _carried_rows(path, label, prefix)

    return Source(label=label, size=path.stat().st_size, read=read, path=path, carries_ids=True)


def _carried_rows(path: Path, label: str, prefix: str) -> Iterator[tuple[str, str, str]]:
    """A corpus shard's documents with the id and source they carry, after `prefix`."""
    import pyarrow.parquet as pq

    row = 0
    for batch in parquet_batches(pq.ParquetFile(path), ["id", "text", "source"], label):
        for doc_id, text, source in zip(*(batch.column(i).to_pylist() for i in range(3))):
            yield (prefix + doc_id if doc_id is not None else f"{label}:{row}"), prefix + (source or label), text or ""
            row += 1


def _file_source(path: Path, label: str) -> Source:
    fmt, compression = file_format(path)
    try:
        size = None if compression else path.stat().st_size  # progress counts decompressed bytes
    except OSError:
        size = None
    if fmt in (".jsonl", ".ndjson", ".json"):
        read = json_reader(path, label, compression, fmt)
    elif fmt in (".csv", ".tsv"):
        read = csv_reader(path, label, compression, delimiter="," if fmt == ".csv" else "\t")
    elif fmt == ".parquet":
        if compression:
            raise UserError(f"{label}: Parquet files are compressed inside; pass the .parquet file itself")
        read = parquet_reader(path, label)
    else:
        return Source(label=label, size=size, read=text_reader(path, label, compression), path=path, plain_text=True)
    return Source(label=label, size=size, read=read, path=path)
