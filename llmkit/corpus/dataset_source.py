"""`--dataset`: a `datasets` data set, by Hub name or as local files or a folder
`save_to_disk` wrote, read as a source of documents. Local paths go to `datasets` as builder
name + data files, never as a repository id."""

from __future__ import annotations

import contextlib
import json
import os
from pathlib import Path
from typing import Iterator, Optional

from llmkit.corpus.reading import ReadOptions, ReadStats, Source, folder_files
from llmkit.corpus.record_files import field_alternatives, is_a_number, pick_column
from llmkit.artifacts import unexpanded_pattern
from llmkit.data.corpus import file_format
from llmkit.errors import UserError
from llmkit.runtime import offline_when_unreachable


_BUILDERS = {".jsonl": "json", ".json": "json", ".ndjson": "json", ".csv": "csv", ".parquet": "parquet", ".arrow": "arrow"}


def _local_builder(path: Path) -> tuple[str, dict[str, list[str]]]:
    """A local path goes to `datasets` as builder name + data_files per split, never as a
    repository id. A folder's files are split as `datasets` splits them (its own resolver: split
    names in folder names first, then in file names, then `data/{split}-00000-of-00001` shards;
    with none of these every file is train); a single file is the train split."""
    if not path.is_dir():
        return _BUILDERS.get(file_format(path)[0], "text"), {"train": [str(path)]}
    files = folder_files(path).readable
    if not files:
        raise UserError(f"dataset folder {path} holds no .jsonl/.json/.csv/.parquet/.txt files")
    # Record files (a data set) win over loose text files (a README beside them).
    builders = {_BUILDERS[file_format(p)[0]] for p in files if file_format(p)[0] in _BUILDERS}
    if len(builders) > 1:  # `datasets` builds a data set from files of one format
        suffixes = sorted({file_format(p)[0] for p in files if file_format(p)[0] in _BUILDERS})
        raise UserError(f"dataset folder {path} mixes {', '.join(suffixes)} files, and a data set is read in one format; "
                        f"pass the folder as an input instead (llmkit clean {path}: it reads every file), or keep one format there")
    builder = builders.pop() if builders else "text"
    return builder, _splits_as_datasets_finds_them(path, [p for p in files if _BUILDERS.get(file_format(p)[0], "text") == builder])


def _splits_as_datasets_finds_them(folder: Path, files: list[Path]) -> dict[str, list[str]]:
    """`files` (the data set's, inside `folder`) by split, with `datasets`' own rules for a folder:
    split names in folder names first, then in file names, then the Hub's `data/{split}-NNNNN-of-NNNNN`
    shards; where none names a split, every file is train. Its resolver sees only these files, so a
    stray `train.log` or `test_notes.md` decides nothing; the folder's name is escaped, since
    `datasets` reads it as a glob pattern (`runs[1]`)."""
    import functools
    import glob

    from datasets.data_files import _get_data_files_patterns, resolve_pattern

    ours = {p.resolve() for p in files}

    @functools.cache  # (each pattern is tried while the rules are chosen, then read for the chosen ones)
    def found(pattern: str) -> list[str]:
        try:
            matches = resolve_pattern(pattern, base_path=glob.escape(str(folder)))
        except FileNotFoundError:
            return []
        return sorted(match for match in matches if Path(match).resolve() in ours)

    def resolver(pattern: str) -> list[str]:
        matches = found(pattern)
        if not matches:
            raise FileNotFoundError(pattern)
        return matches

    try:
        patterns = _get_data_files_patterns(resolver)
    except ValueError as exc:  # a Hub-style shard name whose split `datasets` refuses ("my-split-00000-of-00001")
        raise UserError(f"dataset folder {folder}: {' '.join(str(exc).split())[:200]}; rename its files, or pass the folder "
                        "as an input (llmkit clean FOLDER reads every file)") from None
    splits = {str(split): sorted({match for pattern in split_patterns for match in found(pattern)})
              for split, split_patterns in patterns.items()}
    return {split: matches for split, matches in splits.items() if matches}


def saved_dataset(path: Path) -> Optional[dict[str, list[str]]]:
    """The files per split of a folder written by `save_to_disk`: a `DatasetDict`'s (a folder per
    split) or a `Dataset`'s (the train split, as a single file is); None for any other folder."""
    if (path / "dataset_dict.json").is_file():
        try:
            splits = json.loads((path / "dataset_dict.json").read_text(encoding="utf-8"))["splits"]
        except (ValueError, KeyError, TypeError):
            raise UserError(f"{path / 'dataset_dict.json'} is not a data set's split list; write it again with "
                            "DatasetDict.save_to_disk") from None
        return {split: sorted(str(p) for p in (path / split).iterdir() if p.is_file()) if (path / split).is_dir() else []
                for split in splits}
    if (path / "state.json").is_file() and (path / "dataset_info.json").is_file():
        return {"train": sorted(str(p) for p in path.iterdir() if p.is_file())}
    return None


def _dataset_identity(local: Path, name: str, config_name: Optional[str], split: str,
                      data_files: Optional[dict[str, list[str]]]) -> list:
    """What a resumed run must have been reading: the label holds only the folder's last name, so
    another folder of that name, an edited file or another configuration would otherwise continue
    the partial output of this one. A local data set is its resolved path and every file's size and
    modification time; a hub data set its name (the revision is whatever the pinned cache holds)."""
    from llmkit.resume import file_identity

    if data_files is None:
        return ["dataset", name, config_name, split]
    files = [[split_name, *file_identity(file)] for split_name, paths in sorted(data_files.items()) for file in paths]
    return ["dataset", str(local.resolve()), config_name, split, files]


def dataset_source(name: str, config_name: Optional[str], split: str) -> Source:
    local = Path(name)
    label = f"dataset:{local.name if local.exists() else name}/{split}"
    path_like = name.startswith(("./", "../", "/", "~")) or name.lower().endswith((".jsonl", ".json", ".csv", ".parquet", ".arrow",
                                                                                     ".txt"))
    if path_like and not local.exists():  # not a Hub name (OWNER/NAME): a file that is not there
        if unexpanded_pattern(name):
            raise UserError(f"--dataset {name}: no file matches it; --dataset takes one file or folder, and expands no "
                            "pattern: pass the folder")
        raise UserError(f"--dataset {name}: no such file or folder; check the path (a Hub dataset is named OWNER/NAME)")
    saved = saved_dataset(local) if local.is_dir() else None
    if saved is not None:  # read with load_from_disk: its Arrow files are memory-mapped where they are
        builder, data_files = "saved", saved
    else:
        builder, data_files = _local_builder(local) if local.exists() else (None, None)
    if builder == "text":  # `datasets`' text builder makes a document of every line, whatever --doc-per says
        raise UserError(f"--dataset {name}: text files are read as inputs, where --doc-per says what a document is "
                        f"(llmkit clean {name}); --dataset reads data sets: .jsonl/.json, .csv, .parquet or .arrow files, a "
                        "folder save_to_disk wrote, or a Hub name")
    if data_files is not None and split not in data_files:
        raise UserError(f"{name} has no split {split!r}; its splits are {', '.join(data_files)} "
                        "(a single file is the train split); choose one with --split")

    def read(options: ReadOptions, stats: ReadStats) -> Iterator[tuple[str, str]]:
        with contextlib.ExitStack() as held:  # a local file's fresh cache lasts while its rows are read
            yield from read_loaded(options, stats, held)

    def read_loaded(options: ReadOptions, stats: ReadStats, held: contextlib.ExitStack) -> Iterator[tuple[str, str]]:
        import datasets

        from llmkit.runtime import datasets_cache_dir, datasets_quiet, local_dataset

        offline = False
        try:
            if builder == "saved":
                ds = datasets.load_from_disk(str(local))
                ds = ds[split] if isinstance(ds, datasets.DatasetDict) else ds
            elif data_files is not None:  # prepared afresh: `datasets` keys a local file by path and time
                ds = held.enter_context(local_dataset(builder, data_files, split))
            else:
                with offline_when_unreachable() as offline, datasets_quiet():
                    ds = datasets.load_dataset(name, config_name, split=split, cache_dir=str(datasets_cache_dir()))
        except UserError:
            raise
        except Exception as exc:  # datasets raises many types: not found, offline, bad split, bad files
            if data_files is not None:  # the reader's own reason (a JSON parse error, a bad byte), not the wrapper's
                reason = exc
                for _ in range(16):  # (a chain is short; the bound only guards against a cycle)
                    exc = exc.__cause__ or (exc.__context__ if type(exc).__module__.startswith("datasets") else None)
                    if exc is None:
                        break
                    if str(exc).strip():  # (a bare StopIteration says nothing)
                        reason = exc
                detail = " ".join(str(reason).split())[:300]
                advice = ("write it again with save_to_disk" if builder == "saved" else
                          f"fix the file, or pass it as an input (llmkit clean {name}), whose readers name the line "
                          "and skip bad ones with --skip-bad-lines")
                raise UserError(f"could not read dataset {name!r}: {type(reason).__name__}: {detail}; {advice}") from None
            detail = " ".join(str(exc).split())[:300]
            if offline:
                raise UserError(
                    f"dataset {name!r} is not in the local cache and the Hugging Face Hub cannot be reached; connect to "
                    "the network, or pass a local file or folder with --dataset PATH"
                ) from None
            raise UserError(
                f"could not load dataset {name!r} (split {split!r}): {type(exc).__name__}: {detail}; "
                "check the name, --dataset-config and --split (hub datasets need a network connection)"
            ) from None
        wanted = field_alternatives(options.text_field) if options.text_field is not None else []
        if any("." in name and name not in ds.column_names for name in wanted):
            ds = ds.flatten()  # a nested column's fields become columns named `a.b` (wmt's `translation.de`)
        string_columns = [k for k, v in ds.features.items() if getattr(v, "dtype", None) in ("string", "large_string")]
        guessable = string_columns
        if options.text_field is None:  # (a CSV's columns are all read as text: a column of digits, a label, is no text)
            head = ds[:100]
            guessable = [k for k in string_columns if any(isinstance(v, str) and not is_a_number(v) for v in head[k])]
        column = pick_column(label, options.text_field, list(ds.column_names), guessable)
        if column not in string_columns:  # (the file readers refuse such a field too, rather than str() its numbers)
            holds = getattr(ds.features[column], "dtype", type(ds.features[column]).__name__)
            raise UserError(f"{label}: column {column!r} holds {holds}, not text; pass --text-field with a text column"
                            + (f" ({', '.join(string_columns)})" if string_columns else ""))
        for start in range(0, len(ds), 1000):
            batch = ds[start : start + 1000][column]
            for offset, value in enumerate(batch):
                if value is None:  # (a record without the field reads as null too) a bad record, as in a JSONL input
                    if options.skip_bad_lines:
                        stats.skipped(f"{label}:{start + offset}")
                        continue
                    raise UserError(f"{label}: row {start + offset} (counting from 0, over the split's files in order): "
                                    f"column {column!r} is null (a record without text); fix it or pass --skip-bad-lines")
                yield str(start + offset), value

    size = None
    if local.is_file():
        size = os.path.getsize(local)
    return Source(label=label, size=size, read=read, identity=_dataset_identity(local, name, config_name, split, data_files))

