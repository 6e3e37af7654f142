"""The clean stage end to end: shared data through the default preset, determinism, workers, output format."""

from __future__ import annotations

import glob
import json
import os
from dataclasses import replace

import pyarrow.parquet as pq
import pytest

from llmkit import artifacts
from llmkit.corpus import pipeline
from llmkit.corpus.config import CleanConfig, resolve
from llmkit.errors import UserError


def _clean(inputs, out, cfg=None, **kwargs):
    return pipeline.clean([str(i) for i in inputs], out, cfg or CleanConfig(), show_progress=False, **kwargs)


def _texts(path):
    return [t for shard in sorted((path / "shards").glob("*.parquet")) for t in pq.read_table(shard).column("text").to_pylist()]


@pytest.mark.parametrize(
    "name, field, doc_per, min_kept",
    [
        ("tinyshakespeare.txt", None, "file", 1.0),
        ("tinyshakespeare.txt", None, "blank-line", 0.97),  # real repeats: "All:\nAy." and the like
        ("chinese.txt", None, "file", 1.0),
        ("chinese.txt", None, "line", 0.998),  # a few repeated poem lines
        ("sentiment", None, "file", 1.0),
        ("translation", "source", "file", 0.999),
        ("translation", "target", "file", 0.999),
        ("summarization", "document", "file", 0.98),  # 14 real duplicate dialogues (Jaccard >= 0.7)
        ("summarization", "summary", "file", 0.99),
    ],
)
def test_shared_data_passes_the_default_preset_essentially_whole(shared_data, tmp_path, name, field, doc_per, min_kept):
    out = _clean([shared_data / name], tmp_path / "out", CleanConfig(text_field=field, doc_per=doc_per))
    stats = artifacts.load(out, kind="corpus").stats
    assert stats["documents"] / stats["documents_in"] >= min_kept, stats["dropped"]
    assert set(stats["dropped"]) <= {"exact_duplicate", "near_duplicate"}  # only duplicates go
    if doc_per == "file" and name.endswith(".txt"):
        original = (shared_data / name).read_text(encoding="utf-8")
        assert _texts(out)[0].split() == original.split()  # the book comes back cleaned, not changed


def test_corpus_artifact_format_and_datasets_round_trip(shared_data, tmp_path):
    import datasets

    from llmkit.runtime import datasets_cache_dir

    out = _clean([shared_data / "sentiment", shared_data / "tinyshakespeare.txt"], tmp_path / "corpus")
    art = artifacts.load(out, kind="corpus")
    assert artifacts.verify(out).ok
    assert sorted(art.manifest.files) == ["shards/part-00000.parquet"]
    table = pq.read_table(out / "shards" / "part-00000.parquet")
    assert table.column_names == ["id", "text", "source"]
    assert art.stats["documents"] == table.num_rows == 2501
    assert art.stats["bytes"] == sum(len(t.encode()) for t in table.column("text").to_pylist())
    assert art.stats["bytes_in"] >= art.stats["bytes"] and art.stats["documents_in"] == 2501
    ids = table.column("id").to_pylist()
    assert len(set(ids)) == len(ids) and ids[0].startswith("sentiment/test.jsonl:1".split("/")[0])
    assert not any(str(tmp_path) in s for s in table.column("source").to_pylist())
    assert art.manifest.runtime == {"workers": 1, "executor": "local", "ray_address": None} and "workers" not in art.config
    loaded = datasets.load_dataset(
        "parquet", data_files=str(out / "shards" / "*.parquet"), split="train", cache_dir=str(datasets_cache_dir())
    )
    assert loaded.num_rows == 2501 and loaded[0]["text"] == table.column("text")[0].as_py()
    # verify catches a changed shard
    (out / "shards" / "part-00000.parquet").write_bytes(b"PAR1 changed")
    assert not artifacts.verify(out).ok


def test_same_input_and_config_give_the_same_fingerprint(shared_data, tmp_path):
    chinese = tmp_path / "chinese-part.txt"  # a slice keeps the test quick; non-ASCII exercises ftfy
    chinese.write_text((shared_data / "chinese.txt").read_text(encoding="utf-8")[:60_000], encoding="utf-8")
    inputs = [shared_data / "sentiment", chinese]
    first = artifacts.load(_clean(inputs, tmp_path / "a"))
    second = artifacts.load(_clean(inputs, tmp_path / "b"))
    assert first.fingerprint == second.fingerprint and first.manifest.files == second.manifest.files
    reseeded = artifacts.load(_clean(inputs, tmp_path / "c", CleanConfig(seed=1)))
    assert reseeded.fingerprint != first.fingerprint  # the seed is part of what is hashed
    # ... where something is drawn: without near-dedup no MinHash is made, and neither its settings nor the seed count
    plain = [artifacts.load(_clean(inputs, tmp_path / f"plain{seed}", CleanConfig(seed=seed, near_dedup=False)))
             for seed in (1, 2)]
    for setting in ({"num_perm": 120}, {"bands": 9}, {"threshold": 0.8}):  # (unread: refused, as any rule's that is off)
        with pytest.raises(UserError, match="would change nothing here .*--no-near-dedup turns off"):
            CleanConfig(near_dedup=False, **setting)
    for setting in ({"split": "1.5"}, {"dataset_config": "foo"}):  # (files read nothing of them: a review found them ignored)
        with pytest.raises(UserError, match="would change nothing here .*which --dataset NAME names"):
            CleanConfig(**setting)
    CleanConfig(dataset="some/set", split="validation", dataset_config="en")
    assert plain[0].fingerprint == plain[1].fingerprint and plain[0].manifest.seed is None
    assert not {"seed", "num_perm", "bands", "rows", "ngram", "threshold"} & set(plain[0].config)
    # --threshold is recorded as the bands x rows it picks: typed as those, the same corpus and fingerprint
    by_threshold = artifacts.load(_clean(inputs, tmp_path / "t", CleanConfig(threshold=0.8)))
    by_bands = artifacts.load(_clean(inputs, tmp_path / "br", CleanConfig(bands=9, rows=12)))
    assert (by_threshold.config["bands"], by_threshold.config["rows"]) == (9, 12) and by_threshold.config["threshold"] is None
    assert by_threshold.fingerprint == by_bands.fingerprint != first.fingerprint


@pytest.mark.slow
def test_two_workers_give_the_same_artifact(shared_data, tmp_path):
    inputs = [shared_data / "summarization", shared_data / "sentiment"]
    cfg = CleanConfig(text_field=None, keep_rejects=True)
    docs = tmp_path / "docs.jsonl"
    with open(docs, "w", encoding="utf-8") as handle:
        for path in sorted((shared_data / "summarization").glob("*.jsonl")):
            for line in open(path, encoding="utf-8"):
                handle.write(json.dumps({"text": json.loads(line)["document"]}) + "\n")
    inputs = [docs, shared_data / "sentiment", shared_data / "tinyshakespeare.txt"]
    one = artifacts.load(_clean(inputs, tmp_path / "one", replace(cfg, workers=1)))
    two = artifacts.load(_clean(inputs, tmp_path / "two", replace(cfg, workers=2)))
    assert one.fingerprint == two.fingerprint
    assert two.manifest.runtime == {"workers": min(2, os.cpu_count()), "executor": "local", "ray_address": None}
    assert one.stats["dropped"] == two.stats["dropped"] and one.stats["dropped"]


def test_keep_rejects_writes_reasons(shared_data, tmp_path):
    reviews = [json.loads(line) for line in open(shared_data / "sentiment" / "test.jsonl", encoding="utf-8")]
    rows = reviews[:50] + reviews[:5] + [{"text": "\x00\x01\x02\x03" * 20}, {"text": "   "}]
    source = tmp_path / "r.jsonl"
    source.write_text("".join(json.dumps(r) + "\n" for r in rows), encoding="utf-8")
    out = _clean([source], tmp_path / "out", CleanConfig(keep_rejects=True))
    rejects = [json.loads(line) for line in open(out / "rejects.jsonl", encoding="utf-8")]
    assert [(r["id"], r["reason"]) for r in rejects] == [
        *[(f"r.jsonl:{51 + i}", "exact_duplicate") for i in range(5)],
        ("r.jsonl:56", "binary"),
        ("r.jsonl:57", "empty"),
    ]
    assert rejects[0]["duplicate_of"] == "r.jsonl:1" and rejects[0]["text"] == reviews[0]["text"]
    assert "rejects.jsonl" in artifacts.load(out).manifest.files


def test_web_preset_and_config_file(shared_data, tmp_path):
    config = tmp_path / "clean.toml"
    config.write_text('[clean]\npreset = "web"\nmin_words = 10\nlanguages = ["en"]\n', encoding="utf-8")
    cfg = resolve(config, {})
    assert cfg.gopher_quality and cfg.c4 and cfg.min_words == 10
    assert resolve(config, {"min_words": 20}).min_words == 20  # flags beat the file
    assert resolve(config, {"c4": False}).c4 is False
    yaml_file = tmp_path / "clean.yaml"
    yaml_file.write_text("threshold: 0.8\nngram: 3\n", encoding="utf-8")
    from_yaml = resolve(yaml_file, {})
    assert (from_yaml.bands, from_yaml.rows, from_yaml.ngram, from_yaml.preset) == (9, 12, 3, "default")
    bad = tmp_path / "bad.toml"
    bad.write_text("min_wrds = 3\n", encoding="utf-8")
    with pytest.raises(UserError, match="unknown option"):
        resolve(bad, {})
    web = resolve(explicit={"preset": "web", "doc_per": "blank-line"})
    part = tmp_path / "shakespeare-part.txt"
    part.write_text((shared_data / "tinyshakespeare.txt").read_text(encoding="utf-8")[:200_000], encoding="utf-8")
    art = artifacts.load(_clean([part], tmp_path / "web", web))
    assert art.config["gopher_quality"] is True
    assert "gopher_short_doc" in art.stats["dropped"] and art.stats["documents"] > 0


def test_everything_dropped_is_an_error_naming_the_reasons(shared_data, tmp_path):
    with pytest.raises(UserError, match=r"all 500 documents were dropped \(gopher_short_doc: \d+, language"):
        _clean([shared_data / "sentiment" / "test.jsonl"], tmp_path / "out", resolve(explicit={"preset": "web"}))
    assert not (tmp_path / "out").exists()
    assert [p.name for p in tmp_path.iterdir()] == []  # no temporary folder left either


def test_exception_mid_write_leaves_no_output(shared_data, tmp_path, monkeypatch):
    from llmkit.corpus import writer

    def broken(self, *args, **kwargs):
        raise RuntimeError("disk full")

    monkeypatch.setattr(writer.ShardWriter, "close", broken)
    with pytest.raises(RuntimeError):
        _clean([shared_data / "sentiment"], tmp_path / "out")
    assert list(tmp_path.iterdir()) == []


def test_an_input_cut_while_it_is_read_is_refused(shared_data, tmp_path, monkeypatch):
    """A file truncated while clean read it gave a corpus of half the data, exit 0: nothing
    records a raw file's hash, so no later stage could tell. Told by the file's identity."""
    from llmkit.corpus import writer

    book = tmp_path / "book.txt"
    book.write_text((shared_data / "tinyshakespeare.txt").read_text(encoding="utf-8")[:200_000], encoding="utf-8")
    real_close = writer.ShardWriter.close

    def cut_then_close(self, *args, **kwargs):  # the input cut after it was read, before the output is published
        with book.open("r+b") as handle:
            handle.truncate(1000)
        return real_close(self, *args, **kwargs)

    monkeypatch.setattr(writer.ShardWriter, "close", cut_then_close)
    with pytest.raises(UserError, match=r"book.txt changed while clean read it \(its size"):
        _clean([book], tmp_path / "out", resolve(explicit={"doc_per": "line"}))
    assert sorted(p.name for p in tmp_path.iterdir()) == ["book.txt"]
    # its metadata alone changed (a chmod, a hard link a backup made): no byte was, and the run stands
    book.write_text((shared_data / "tinyshakespeare.txt").read_text(encoding="utf-8")[:200_000], encoding="utf-8")

    def chmod_then_close(self, *args, **kwargs):
        book.chmod(0o600)
        os.link(book, tmp_path / "snapshot.txt")
        return real_close(self, *args, **kwargs)

    monkeypatch.setattr(writer.ShardWriter, "close", chmod_then_close)
    _clean([book], tmp_path / "out", resolve(explicit={"doc_per": "line"}))
    assert artifacts.load(tmp_path / "out", kind="corpus").manifest.stats["documents_in"] > 1000


def test_lone_surrogates_and_mojibake_are_repaired(tmp_path):
    rows = [
        '{"text": "a sentence long enough to hold half a surrogate pair \\ud83d without looking garbled"}',
        '{"text": "The Mona Lisa doesn\\u00c3\\u00a2\\u00e2\\u0082\\u00ac\\u00e2\\u0084\\u00a2t have eyebrows."}',
    ]
    source = tmp_path / "odd.jsonl"
    source.write_text("\n".join(rows) + "\n", encoding="utf-8")
    for fix in (True, False):  # with or without ftfy, nothing unencodable reaches the Parquet writer
        out = _clean([source], tmp_path / f"out-{fix}", CleanConfig(fix_unicode=fix))
        texts = _texts(out)
        assert len(texts) == 2 and all(t.encode("utf-8") for t in texts)
        assert "half a surrogate pair \ufffd without" in texts[0], texts[0]  # U+FFFD either way, not '?'
    assert _texts(tmp_path / "out-True")[1] == "The Mona Lisa doesn’t have eyebrows."


def test_a_killed_clean_resumes_from_its_last_shard_and_writes_the_same_artifact(shared_data, tmp_path):
    """SIGKILL the stage after a few shards; the rerun continues from the completion marker (not from
    the start) and the artifact is the one an uninterrupted run writes, rejects file included."""
    import subprocess
    import sys

    from conftest import kill_at_marker

    paragraphs = [p.strip() for p in (shared_data / "tinyshakespeare.txt").read_text(encoding="utf-8").split("\n\n") if p.strip()]
    rows = []
    for copy in range(8):  # distinct enough to be kept, with exact and near copies planted among them
        for text in paragraphs:
            words = text.split()
            if copy:
                words = [w[::-1] + str(copy) if i % 2 == 0 else w for i, w in enumerate(words)]
            rows.append(" ".join(words))
        rows += paragraphs[:50]
    data = tmp_path / "data.jsonl"
    data.write_text("".join(json.dumps({"text": t}) + "\n" for t in rows), encoding="utf-8")
    flags = ["--shard-mb", "1", "--keep-rejects"]
    command = [sys.executable, "-m", "llmkit", "clean", str(data), *flags]

    straight = tmp_path / "straight"
    assert subprocess.run([*command, "-o", str(straight)], capture_output=True).returncode == 0

    killed = tmp_path / "killed"
    shards_done, _ = kill_at_marker([*command, "-o", str(killed)], str(tmp_path / ".killed.partial-*" / "resume.json"),
                                 lambda state: len(state["shards"]), 3)
    assert shards_done >= 3, "the run ended before it could be interrupted"
    assert not killed.exists()  # nothing at the output path, only the hidden partial folder

    result = subprocess.run([*command, "-o", str(killed)], capture_output=True, text=True)
    assert result.returncode == 0, result.stderr
    import re

    resumed = re.search(r"resuming the interrupted run: (\d+) shard\(s\)", result.stderr)
    assert resumed and int(resumed.group(1)) >= shards_done  # (one more may have closed before the kill landed)
    assert artifacts.load(killed).fingerprint == artifacts.load(straight).fingerprint
    assert (killed / "rejects.jsonl").read_bytes() == (straight / "rejects.jsonl").read_bytes()
    assert not glob.glob(str(tmp_path / ".killed.partial-*"))
    # Shards are cut by size alone: each holds at least --shard-mb of text but the last (no one-document shards),
    # and is closed at the document that reaches it, not at the next 10,000-row group
    sizes = [sum(len(t.encode()) for t in pq.read_table(p).column("text").to_pylist())
             for p in sorted((straight / "shards").iterdir())]
    assert len(sizes) > 3 and min(sizes[:-1]) >= 1 << 20 and max(sizes) < (1 << 20) + max(len(t.encode()) for t in rows)
    # A partial folder of another run (another input or config) is removed, never continued
    other = tmp_path / "other"
    stale = tmp_path / ".other.partial-0123456789abcdef"
    (stale / "shards").mkdir(parents=True)
    (stale / "resume.json").write_text("{}")
    result = subprocess.run([*command, "-o", str(other)], capture_output=True, text=True)
    assert result.returncode == 0 and "resuming" not in result.stderr and not stale.exists()
    assert artifacts.load(other).fingerprint == artifacts.load(straight).fingerprint


def test_sigterm_stops_clean_as_ctrl_c_does_and_the_rerun_continues(shared_data, tmp_path):
    """`kill`, `timeout` and schedulers send SIGTERM: the stage stops its workers, says so in one line
    (exit 143, no traceback, no leaked-semaphore warning), leaves nothing at -o, and a rerun continues."""
    import signal
    import subprocess
    import sys

    from conftest import kill_at_marker

    paragraphs = [p.strip() for p in (shared_data / "tinyshakespeare.txt").read_text(encoding="utf-8").split("\n\n") if p.strip()]
    data = tmp_path / "data.jsonl"
    data.write_text("".join(json.dumps({"text": f"{copy} {text}"}) + "\n" for copy in range(12) for text in paragraphs),
                    encoding="utf-8")
    command = [sys.executable, "-m", "llmkit", "clean", str(data), "--shard-mb", "1", "--workers", "2", "-o", str(tmp_path / "out")]
    log = tmp_path / "stderr.txt"
    with open(log, "w") as stderr:
        done, code = kill_at_marker(command, str(tmp_path / ".out.partial-*" / "resume.json"), lambda state: len(state["shards"]),
                                    1, signum=signal.SIGTERM, stderr=stderr)
    assert done >= 1, "the run ended before it could be stopped"
    assert code == 143
    said = log.read_text()
    assert "terminated; rerun the command to continue where it stopped" in said, said
    assert "Traceback" not in said and "leaked" not in said, said
    partial = glob.glob(str(tmp_path / ".out.partial-*"))
    assert len(partial) == 1 and f"the work done so far is kept in {partial[0]}" in " ".join(said.split()), said
    assert not (tmp_path / "out").exists()
    rerun = subprocess.run(command, capture_output=True, text=True)
    assert rerun.returncode == 0 and "resuming the interrupted run" in rerun.stderr, rerun.stderr


def test_a_resumed_clean_knows_its_files_by_real_path_and_time_not_by_label(tmp_path):
    """Given by absolute path, a file's label is its name alone: another file of that name and size,
    or the same file edited in place, must not continue the interrupted run's partial output."""
    import os

    from llmkit.corpus.pipeline import input_identities
    from llmkit.corpus.sources import resolve_inputs

    for folder in ("a", "b"):
        (tmp_path / folder).mkdir()
        (tmp_path / folder / "data.txt").write_text("First Citizen: speak.\n")
    first = input_identities(resolve_inputs([str(tmp_path / "a" / "data.txt")], None, None, "train"))
    other = input_identities(resolve_inputs([str(tmp_path / "b" / "data.txt")], None, None, "train"))
    assert first != other
    (tmp_path / "a" / "data.txt").write_text("Fxrst Citizen: speak.\n")  # the same size, edited
    stat = (tmp_path / "a" / "data.txt").stat()
    os.utime(tmp_path / "a" / "data.txt", ns=(stat.st_atime_ns, stat.st_mtime_ns + 1_000_000))
    edited = input_identities(resolve_inputs([str(tmp_path / "a" / "data.txt")], None, None, "train"))
    assert edited != first
    # replaced with its modification time set back, as rsync -a and tar x do: the new file's inode tells
    # (an in-place edit, as cp -p makes, changes the change time, which no user sets)
    (tmp_path / "a" / "new.txt").write_text("Fyrst Citizen: speak.\n")
    os.utime(tmp_path / "a" / "new.txt", ns=(stat.st_atime_ns, stat.st_mtime_ns + 1_000_000))
    os.replace(tmp_path / "a" / "new.txt", tmp_path / "a" / "data.txt")
    assert input_identities(resolve_inputs([str(tmp_path / "a" / "data.txt")], None, None, "train")) != edited


def test_a_resumed_clean_knows_a_data_set_by_its_path_files_and_configuration(tmp_path):
    """A --dataset label holds only the folder's last name and the split: another folder of that name,
    an edited file or another --dataset-config must not continue the interrupted run's partial output."""
    import os

    from llmkit.corpus.pipeline import input_identities
    from llmkit.corpus.sources import resolve_inputs

    for folder in ("a", "b"):
        (tmp_path / folder / "data").mkdir(parents=True)
        (tmp_path / folder / "data" / "train.jsonl").write_text('{"text": "First Citizen: speak."}\n')

    def identity(folder, config=None, split="train"):
        return input_identities(resolve_inputs([], str(tmp_path / folder / "data"), config, split))

    first = identity("a")
    assert first == identity("a") and first != identity("b")
    assert first != identity("a", config="other")
    train = tmp_path / "a" / "data" / "train.jsonl"
    train.write_text('{"text": "Fxrst Citizen: speak."}\n')  # the same size, edited
    stat = train.stat()
    os.utime(train, ns=(stat.st_atime_ns, stat.st_mtime_ns + 1_000_000))
    assert identity("a") != first
    (tmp_path / "a" / "data" / "test.jsonl").write_text('{"text": "Second Citizen."}\n')
    assert identity("a", split="test") != identity("a")
    hub = input_identities(resolve_inputs([], "owner/name", None, "train"))
    assert hub != input_identities(resolve_inputs([], "owner/name", "config", "train"))


def test_a_killed_dataset_run_is_not_continued_with_another_data_set(shared_data, tmp_path):
    """Kill a --dataset run after a shard, then run another data set of the same folder name into the
    same -o: a fresh run (no "resuming"), whose artifact is the one a straight run on it writes."""
    import subprocess
    import sys

    from conftest import kill_at_marker

    paragraphs = [p.strip() for p in (shared_data / "tinyshakespeare.txt").read_text(encoding="utf-8").split("\n\n") if p.strip()]
    for name, tag in (("A", "alpha"), ("B", "beta")):
        (tmp_path / name / "data").mkdir(parents=True)
        rows = [f"{tag} {copy} {text}" for copy in range(4) for text in paragraphs]
        (tmp_path / name / "data" / "train.jsonl").write_text("".join(json.dumps({"text": t}) + "\n" for t in rows),
                                                              encoding="utf-8")
    command = [sys.executable, "-m", "llmkit", "clean", "--shard-mb", "1", "--no-near-dedup", "--dataset"]
    out = tmp_path / "out"
    done, _ = kill_at_marker([*command, str(tmp_path / "A" / "data"), "-o", str(out)],
                             str(tmp_path / ".out.partial-*" / "resume.json"), lambda state: len(state["shards"]), 1)
    assert done >= 1, "the run ended before it could be interrupted"
    result = subprocess.run([*command, str(tmp_path / "B" / "data"), "-o", str(out)], capture_output=True, text=True)
    assert result.returncode == 0, result.stderr
    assert "resuming" not in result.stderr
    straight = tmp_path / "straight"
    assert subprocess.run([*command, str(tmp_path / "B" / "data"), "-o", str(straight)], capture_output=True).returncode == 0
    assert artifacts.load(out).fingerprint == artifacts.load(straight).fingerprint
    assert all(t.startswith("beta ") for t in _texts(out))


def test_a_corpus_cleaned_again_records_it_as_its_input(tmp_path):
    source = tmp_path / "book.txt"
    source.write_text("A first paragraph of the book, long enough to keep.\n\nA second one, also long enough to keep.\n")
    first = _clean([source], tmp_path / "first")
    again = _clean([first], tmp_path / "again")
    refs = artifacts.load(again).manifest.inputs
    assert [(r["role"], r["fingerprint"]) for r in refs] == [("corpus", artifacts.load(first).fingerprint)]
    assert _texts(again) == _texts(first)


def _killed_in_a_worker(batch):
    import os
    import signal

    os.kill(os.getpid(), signal.SIGKILL)  # as the out-of-memory killer does


def test_a_resumed_clean_whose_worker_is_killed_on_its_first_batch_keeps_its_partial_output(shared_data, tmp_path,
                                                                                             monkeypatch):
    """No batch came back from the rerun's workers, but they had started: the work done before is kept for the
    next rerun, and the message says a worker died (not that a script lacks its __main__ guard)."""
    from llmkit import resume
    from llmkit.errors import WorkerDied

    paragraphs = [p.strip() for p in (shared_data / "tinyshakespeare.txt").read_text(encoding="utf-8").split("\n\n") if p.strip()]
    data = tmp_path / "data.jsonl"
    data.write_text("".join(json.dumps({"text": " ".join(w[::-1] + str(copy) if i % 2 == 0 and copy else w
                                                          for i, w in enumerate(text.split()))}) + "\n"
                            for copy in range(2) for text in paragraphs), encoding="utf-8")
    out = tmp_path / "out"
    save = resume.save

    def save_then_stop(*args, **kwargs):
        save(*args, **kwargs)
        raise RuntimeError("stopped after the first shard")

    with monkeypatch.context() as patch:
        patch.setattr(resume, "save", save_then_stop)
        with pytest.raises(RuntimeError, match="stopped after the first shard"):
            _clean([data], out, CleanConfig(shard_mb=1))
    [partial] = tmp_path.glob(".out.partial-*")
    marker = (partial / "resume.json").read_bytes()

    monkeypatch.setattr(pipeline, "process_batch", _killed_in_a_worker)
    with pytest.raises(WorkerDied, match="a worker process died after 0 batch"):
        _clean([data], out, CleanConfig(shard_mb=1, workers=2))
    assert (partial / "resume.json").read_bytes() == marker and list((partial / "shards").iterdir())
    assert not out.exists()
