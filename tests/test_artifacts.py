"""The artifact format: round trip, fingerprints, atomicity, verify, kind checks, lineage."""

from __future__ import annotations

import json
import os
import re
import shutil
from pathlib import Path

import pytest

from llmkit import artifacts, outputs
from llmkit.errors import UserError


def make(out: Path, kind: str = "corpus", payload: str = "hello", seed: int = 0, config=None, inputs=(), force=False):
    with artifacts.create(out, kind, force=force) as build:
        (build.dir / "data").mkdir()
        (build.dir / "data" / "a.txt").write_text(payload)
        (build.dir / "b.bin").write_bytes(payload.encode() * 3)
        build.config = config or {"lowercase": True, "threshold": 0.8}
        build.seed = seed
        build.stats = {"documents": 1}
        build.runtime = {"workers": 4}
        for role, art in inputs:
            build.add_input(role, art)
    return artifacts.load(out)


def test_round_trip_records_files_config_and_inputs(tmp_path):
    corpus = make(tmp_path / "corpus")
    tok = make(tmp_path / "tok", kind="tokenizer", inputs=[("corpus", corpus)])
    m = tok.manifest
    assert m.kind == "tokenizer" and m.format_version == artifacts.FORMAT_VERSION
    assert set(m.files) == {"data/a.txt", "b.bin"}
    assert m.files["data/a.txt"] == artifacts.sha256_file(tmp_path / "tok" / "data" / "a.txt")
    assert m.inputs == [{"role": "corpus", "kind": "corpus", "path": "corpus", "fingerprint": corpus.fingerprint}]
    assert m.config == {"lowercase": True, "threshold": 0.8}
    assert m.versions["llmkit"] and m.versions["python"]
    assert tok.input("corpus").fingerprint == corpus.fingerprint
    # The manifest on disk is plain JSON a user can read.
    raw = json.loads((tmp_path / "tok" / "manifest.json").read_text())
    assert raw["fingerprint"] == m.fingerprint and raw["stats"] == {"documents": 1}


def test_fingerprint_depends_on_content_config_seed_inputs_not_place_or_runtime(tmp_path):
    a = make(tmp_path / "a")
    (tmp_path / "elsewhere").mkdir()
    b = make(tmp_path / "elsewhere" / "b")
    assert a.fingerprint == b.fingerprint  # same work in another folder
    with artifacts.create(tmp_path / "c", "corpus") as build:  # runtime settings are not hashed
        (build.dir / "data").mkdir()
        (build.dir / "data" / "a.txt").write_text("hello")
        (build.dir / "b.bin").write_bytes(b"hello" * 3)
        build.config = {"lowercase": True, "threshold": 0.8}
        build.seed = 0
        build.runtime = {"workers": 1}
    assert artifacts.load(tmp_path / "c").fingerprint == a.fingerprint
    assert make(tmp_path / "d", payload="other").fingerprint != a.fingerprint
    assert make(tmp_path / "e", seed=1).fingerprint != a.fingerprint
    assert make(tmp_path / "f", config={"lowercase": False}).fingerprint != a.fingerprint
    tok1 = make(tmp_path / "t1", kind="tokenizer", inputs=[("corpus", a)])
    tok2 = make(tmp_path / "t2", kind="tokenizer", inputs=[("corpus", artifacts.load(tmp_path / "d"))])
    assert tok1.fingerprint != tok2.fingerprint


def test_exception_mid_write_leaves_nothing(tmp_path):
    out = tmp_path / "corpus"
    with pytest.raises(RuntimeError):
        with artifacts.create(out, "corpus") as build:
            (build.dir / "half.txt").write_text("partial")
            raise RuntimeError("crash mid-stage")
    assert not out.exists()
    assert list(tmp_path.iterdir()) == []  # no temporary sibling left behind either


def test_failed_force_rewrite_keeps_the_old_artifact(tmp_path):
    out = tmp_path / "corpus"
    old = make(out)
    with pytest.raises(RuntimeError):
        with artifacts.create(out, "corpus", force=True) as build:
            (build.dir / "x").write_text("new")
            raise RuntimeError("crash")
    assert artifacts.load(out).fingerprint == old.fingerprint
    assert artifacts.verify(out).ok


def test_existing_output_needs_force(tmp_path):
    out = tmp_path / "corpus"
    make(out)
    with pytest.raises(UserError, match="already exists; pass --force"):
        make(out)
    new = make(out, payload="replaced", force=True)
    assert (out / "data" / "a.txt").read_text() == "replaced"
    assert artifacts.verify(out).ok and new.fingerprint == artifacts.load(out).fingerprint
    # a folder of the user's: refused as such, --force not advised (it was, then refused); an empty one is taken
    mine = tmp_path / "mine"
    mine.mkdir()
    (mine / "notes.txt").write_text("keep me")
    with pytest.raises(UserError, match="holds files llmkit did not write") as refused:
        make(mine)
    assert "--force" not in str(refused.value) and (mine / "notes.txt").read_text() == "keep me"
    (tmp_path / "empty").mkdir()
    assert artifacts.verify(make(tmp_path / "empty").path).ok


def test_verify_catches_changed_missing_and_edited(tmp_path):
    out = tmp_path / "corpus"
    make(out)
    assert artifacts.verify(out).ok
    (out / "b.bin").write_bytes(b"tampered")
    report = artifacts.verify(out)
    assert not report.ok and any("changed file: b.bin" in p for p in report.problems)
    make(out, force=True)
    (out / "data" / "a.txt").unlink()
    assert any("missing file: data/a.txt" in p for p in artifacts.verify(out).problems)
    make(out, force=True)
    manifest = json.loads((out / "manifest.json").read_text())
    manifest["config"]["threshold"] = 0.1
    (out / "manifest.json").write_text(json.dumps(manifest))
    assert any("fingerprint" in p for p in artifacts.verify(out).problems)
    make(out, force=True)
    manifest = json.loads((out / "manifest.json").read_text())
    manifest["sizes"]["b.bin"] = 12  # (sizes are not hashed: loading checks them, verify says which side changed)
    (out / "manifest.json").write_text(json.dumps(manifest))
    assert artifacts.verify(out).problems == [
        f"edited manifest: its size of b.bin (12 bytes) is not the file's ({(out / 'b.bin').stat().st_size}), whose sha256 matches"]


def test_load_refuses_a_missing_listed_file_and_an_added_one_a_stage_could_read(tmp_path):
    """A listed file deleted, or a file slipped in beside the listed ones (a special_tokens.json that
    remaps eos would change every stage's tokens), is refused on load and named by verify."""
    out = tmp_path / "corpus"
    make(out)
    (out / "data" / "a.txt").unlink()
    with pytest.raises(UserError, match="has no data/a.txt, which its manifest lists"):
        artifacts.load(out)
    make(out, force=True)
    (out / "data" / "extra.txt").write_text("slipped in")
    with pytest.raises(UserError, match="holds data/extra.txt, which its manifest does not list"):
        artifacts.load(out)
    assert "unlisted file: data/extra.txt (added after the artifact was made)" in artifacts.verify(out).problems
    make(out, force=True)
    (out / "special_tokens.json").write_text('{"eos": "<|pad|>"}')  # read wherever it is, so refused at the top too
    with pytest.raises(UserError, match="holds special_tokens.json"):
        artifacts.load(out)
    make(out, force=True)
    (out / "data" / ".DS_Store").write_text("a file browser's")  # hidden files are no stage's input
    assert artifacts.load(out).kind == "corpus" and artifacts.verify(out).ok
    make(out, force=True)
    (out / "metrics.jsonl").write_text("{}")  # the top folder holds unlisted bookkeeping by design
    assert artifacts.load(out).kind == "corpus" and artifacts.verify(out).ok


def test_only_the_resume_state_may_be_listed_outside_the_fingerprint(tmp_path):
    """`state_files` are hashed for verify but not part of the fingerprint: a file listed there
    (say a special_tokens.json that swaps eos and bos) would change what stages do, verify content."""
    out = tmp_path / "corpus"
    make(out)
    (out / "data" / "extra.txt").write_text("slipped in")
    manifest = json.loads((out / "manifest.json").read_text())
    manifest["state_files"] = {"data/extra.txt": artifacts.sha256_file(out / "data" / "extra.txt")}
    manifest["sizes"]["data/extra.txt"] = (out / "data" / "extra.txt").stat().st_size
    (out / "manifest.json").write_text(json.dumps(manifest))
    for check in (artifacts.load, artifacts.verify):
        with pytest.raises(UserError, match="lists 'data/extra.txt' as resume state"):
            check(out)


def test_load_checks_kind_presence_and_version(tmp_path):
    make(tmp_path / "corpus")
    with pytest.raises(UserError, match=r"expected a tokenizer artifact, got corpus at"):
        artifacts.load(tmp_path / "corpus", kind="tokenizer")
    # a wrong input says what makes the artifact wanted from it (a first run's usual slips said nothing more)
    with pytest.raises(UserError, match=rf"got corpus at {tmp_path / 'corpus'}; tokenize it first: llmkit tokenizer train"):
        artifacts.load(tmp_path / "corpus", kind="tokens")
    with pytest.raises(UserError, match="a checkpoint artifact comes from llmkit pretrain, finetune, import or average"):
        artifacts.load(tmp_path / "corpus", kind="checkpoint")
    (tmp_path / "book.txt").write_text("text")
    with pytest.raises(UserError, match="is a file, expected a tokens artifact directory; make tokens of it first: llmkit clean"):
        artifacts.load(tmp_path / "book.txt", kind="tokens")
    assert artifacts.load(tmp_path / "corpus", kind=("tokens", "corpus")).kind == "corpus"
    with pytest.raises(UserError, match="no such artifact"):
        artifacts.load(tmp_path / "missing")
    (tmp_path / "half").mkdir()
    with pytest.raises(UserError, match="not an llmkit artifact"):
        artifacts.load(tmp_path / "half")
    manifest = json.loads((tmp_path / "corpus" / "manifest.json").read_text())
    manifest["format_version"] = artifacts.FORMAT_VERSION + 1
    (tmp_path / "corpus" / "manifest.json").write_text(json.dumps(manifest))
    with pytest.raises(UserError, match="upgrade llmkit"):
        artifacts.load(tmp_path / "corpus")


def test_an_edited_kind_is_named_an_edit_and_a_file_changed_in_place_is_refused_as_read(tmp_path, monkeypatch):
    """load checks sizes only; a stage reading a file whole hashes it beside the read (the weights a
    byte changed in were used, and the eval of them recorded the checkpoint's fingerprint)."""
    corpus = make(tmp_path / "corpus")
    manifest = json.loads((corpus.path / "manifest.json").read_text())
    (corpus.path / "manifest.json").write_text(json.dumps({**manifest, "kind": "tokenizer"}))
    with pytest.raises(UserError, match="manifest.json was edited") as edited:  # (it said "got tokenizer", and how to make one)
        artifacts.load(corpus.path, kind="corpus")
    assert "got" not in str(edited.value)
    (corpus.path / "manifest.json").write_text(json.dumps(manifest))
    with artifacts.checked_as_read(corpus.path / "b.bin", corpus.path / "data" / "a.txt"):  # (data/: the artifact one above)
        pass
    (corpus.path / "data" / "a.txt").write_text("HELLO")  # the same size
    artifacts.load(corpus.path)  # (the cheap check does not see it)
    with pytest.raises(UserError, match=rf"{re.escape(str(corpus.path / 'data' / 'a.txt'))} was changed after the artifact "
                                        rf"{re.escape(str(corpus.path))} was written"):
        with artifacts.checked_as_read(corpus.path / "data" / "a.txt"):
            (corpus.path / "data" / "a.txt").read_text()
    with artifacts.checked_as_read(tmp_path / "elsewhere.txt"):  # a file of no artifact: nothing to compare with
        pass
    # the change is the error told, also where the read failed on what it did (a header that no longer parses)
    with pytest.raises(UserError, match="was changed after the artifact") as told:
        with artifacts.checked_as_read(corpus.path / "data" / "a.txt"):
            raise ValueError("the header does not parse")
    assert isinstance(told.value.__cause__, ValueError)
    with pytest.raises(ValueError):  # an unchanged file: the read's own error
        with artifacts.checked_as_read(corpus.path / "b.bin"):
            raise ValueError("another fault")
    monkeypatch.setenv("LOCAL_RANK", "1")  # a node's other processes: its first one checks
    with artifacts.checked_as_read(corpus.path / "data" / "a.txt"):
        pass


def test_input_that_changed_since_use_is_refused(tmp_path):
    corpus = make(tmp_path / "corpus")
    tok = make(tmp_path / "tok", kind="tokenizer", inputs=[("corpus", corpus)])
    make(tmp_path / "corpus", payload="rebuilt differently", force=True)
    with pytest.raises(UserError, match="changed since it was used"):
        tok.input("corpus")


def test_lineage_walks_inputs_of_inputs(tmp_path):
    corpus = make(tmp_path / "corpus")
    tok = make(tmp_path / "tok", kind="tokenizer", inputs=[("corpus", corpus)])
    make(tmp_path / "tokens", kind="tokens", inputs=[("corpus", corpus), ("tokenizer", tok)])
    tree = artifacts.lineage(tmp_path / "tokens")
    assert tree.kind == "tokens"
    assert [c.role for c in tree.children] == ["corpus", "tokenizer"]
    assert tree.children[1].children[0].kind == "corpus" and tree.children[1].children[0].found
    assert not tree.children[1].children[0].problem
    # An input rebuilt since is shown as what was used (its recorded fingerprint), marked, and not followed;
    recorded = corpus.fingerprint
    make(tmp_path / "corpus", payload="rebuilt differently", force=True)
    replaced = artifacts.lineage(tmp_path / "tokens").children[0]
    assert replaced.fingerprint == recorded and not replaced.found and replaced.problem.startswith("replaced since")
    # a damaged one (its manifest edited) is marked too, and the rest of the tree still shown.
    manifest = json.loads((tmp_path / "corpus" / "manifest.json").read_text())
    manifest["config"]["threshold"] = 0.1
    (tmp_path / "corpus" / "manifest.json").write_text(json.dumps(manifest))
    tree = artifacts.lineage(tmp_path / "tokens")
    assert tree.children[0].problem.startswith("damaged") and tree.children[1].found


def test_finalize_in_place_writes_manifest_last_over_listed_files(tmp_path):
    run = tmp_path / "run"
    builder = artifacts.in_place_builder(run, "checkpoint")
    (run / "model.safetensors").write_bytes(b"weights")
    (run / "metrics.jsonl").write_text('{"step": 1}\n')
    with pytest.raises(UserError):  # not an artifact until the manifest exists
        artifacts.load(run)
    builder.config = {"n_layer": 2}
    artifacts.finalize_in_place(builder, ["model.safetensors"])
    art = artifacts.load(run, kind="checkpoint")
    assert list(art.manifest.files) == ["model.safetensors"]
    assert artifacts.verify(run).ok


def test_an_unfinished_training_run_is_named_as_one(tmp_path):
    """A run directory without its manifest yet: the advice is --resume, not 'rerun the stage'."""
    from llmkit.errors import UserError

    (tmp_path / "run" / "checkpoints").mkdir(parents=True)
    (tmp_path / "run" / "metrics.jsonl").write_text('{"step": 1, "loss": 5.0}\n')
    with pytest.raises(UserError, match="has not finished .* --resume"):
        artifacts.load(tmp_path / "run")
    (tmp_path / "plain").mkdir()
    with pytest.raises(UserError, match="is not an llmkit artifact"):
        artifacts.load(tmp_path / "plain")


def test_what_llmkit_made_in_a_folder_is_told_by_its_files(tmp_path):
    """kind_made_at decides what --force may replace and --resume continue: a run's mark alone (a
    run or a sweep killed as it began) is either's, else the kind its files say."""
    from llmkit import outputs

    marked = tmp_path / "marked"
    marked.mkdir()
    (marked / outputs.RUN_MARK).touch()
    assert outputs.kind_made_at(marked) is None  # (a sweep's rerun was refused it as "a checkpoint", --force too)
    outputs.check_output(marked, True, resume=True, writes="sweep")  # (as run_directory asks)
    outputs.check_output(marked, True, writes="checkpoint")
    (marked / "metrics.jsonl").write_text("{}")
    assert outputs.kind_made_at(marked) == "checkpoint"
    (marked / "runs").mkdir()
    assert outputs.kind_made_at(marked) == "sweep"  # (killed before its configs/: a training run has no runs/)
    (tmp_path / "export").mkdir()
    (tmp_path / "export" / "llmkit_model_config.json").write_text("{}")
    assert outputs.kind_made_at(tmp_path / "export") == "export"
    with artifacts.create(tmp_path / "tok", "tokenizer") as build:
        (build.dir / "x").write_text("x")
    assert outputs.kind_made_at(tmp_path / "tok") == "tokenizer"
    with pytest.raises(UserError, match="is a tokenizer artifact, not a training run: there is nothing in it to continue"):
        outputs.check_output(tmp_path / "tok", True, resume=True, writes="checkpoint")


def test_force_replaces_only_llmkits_outputs_and_glob_characters_match_only_themselves(tmp_path):
    """--force never deletes a folder of the user's own files, and an -o of "c?" never matches
    another output's temporaries."""
    from llmkit import outputs
    from llmkit.errors import UserError

    precious = tmp_path / "precious"
    precious.mkdir()
    (precious / "thesis.tex").write_text("years of work")
    with pytest.raises(UserError, match="did not write"):
        outputs.check_output(precious, force=True)
    assert (precious / "thesis.tex").read_text() == "years of work"
    (tmp_path / "empty").mkdir()
    outputs.check_output(tmp_path / "empty", force=True)  # nothing to lose
    with artifacts.create(tmp_path / "made", "corpus") as build:
        (build.dir / "x.txt").write_text("x")
    outputs.check_output(tmp_path / "made", force=True)  # an artifact may be replaced
    # Names an ML project shares with llmkit's outputs are not a mark: runs/ + configs/, checkpoints/,
    # metrics.jsonl, another tool's manifest.json
    for name, layout in {"proj": ["runs/", "configs/"], "proj2": ["checkpoints/"], "proj3": ["metrics.jsonl"],
                         "proj4": ["manifest.json"]}.items():
        folder = tmp_path / name
        folder.mkdir()
        for entry in layout:
            (folder / entry).mkdir() if entry.endswith("/") else (folder / entry).write_text('{"name": "other tool"}')
        (folder / "notes.txt").write_text("mine")
        with pytest.raises(UserError, match="did not write"):
            outputs.check_output(folder, force=True)
    run = tmp_path / "run"
    run.mkdir()
    (run / outputs.RUN_MARK).touch()
    (run / "metrics.jsonl").write_text("{}")
    outputs.check_output(run, force=True)  # a training run llmkit started
    with artifacts.create(tmp_path / "checkpoint", "checkpoint") as build:
        (build.dir / "model.safetensors").write_bytes(b"weights")
    old_sweep = tmp_path / "old-sweep"  # from before the mark: a sweep in progress holding a finished run
    shutil.copytree(tmp_path / "checkpoint", old_sweep / "runs" / "d1")
    (old_sweep / "configs").mkdir()
    (old_sweep / "configs" / "d1.yaml").write_text("lr: 0.001")
    (old_sweep / "logs").mkdir()
    (old_sweep / "logs" / "d1.log").write_text("step 1")
    outputs.check_output(old_sweep, force=True)
    # Nor is a project of those folder names holding its own files, or other artifacts under runs/
    for extra in ("configs/my_experiment.yaml", "logs/notes.log", "logs/d1.txt", "plots/figure.png", "runs/corpus"):
        project = tmp_path / "look-alike" / extra.replace("/", "-")
        shutil.copytree(old_sweep, project)
        if extra == "runs/corpus":
            shutil.copytree(tmp_path / "made", project / extra)
        else:
            (project / extra).parent.mkdir(exist_ok=True)
            (project / extra).write_text("mine")
        with pytest.raises(UserError, match="did not write"):
            outputs.check_output(project, force=True)
    # A project that keeps its artifacts under runs/ (the docs' -o runs/NAME) beside its own files is no
    # run: a typo of -o proj for -o proj/runs/corpus emptied it
    for name, artifact in (("project", "made"), ("project-with-a-run", "checkpoint")):
        project = tmp_path / name
        shutil.copytree(tmp_path / artifact, project / "runs" / "mine")
        (project / "notes.md").write_text("mine")
        with pytest.raises(UserError, match="did not write"):
            outputs.check_output(project, force=True)
    (tmp_path / "project" / "notes.md").unlink()  # only runs/ left, holding a corpus: still not a run of ours
    with pytest.raises(UserError, match="did not write"):
        outputs.check_output(tmp_path / "project", force=True)
    damaged = tmp_path / "damaged"  # an artifact of ours whose manifest was damaged: --force may rebuild it
    shutil.copytree(tmp_path / "made", damaged)
    manifest = json.loads((damaged / "manifest.json").read_text())
    (damaged / "manifest.json").write_text(json.dumps({**manifest, "fingerprint": "edited", "files": []}))
    outputs.check_output(damaged, force=True)
    other = tmp_path / ".cA.tmp-123"  # another output's work in progress
    other.mkdir()
    with outputs.output_lock(tmp_path / "c?"):
        pass
    assert other.is_dir()
    # an output named like a temporary of another (`cA.tmp-a` beside `cA`): its lock and its work in
    # progress are its own, which a run on cA removed (a glob of .cA.tmp-*) while that run wrote them
    (tmp_path / ".cA.tmp-a.lock").write_text("")
    (tmp_path / ".cA.tmp-a.partial-0123456789abcdef").mkdir()
    (tmp_path / ".cA.old-x.tmp-b").mkdir()
    with outputs.output_lock(tmp_path / "cA"):
        pass
    assert not other.exists()  # cA's own killed run's
    assert (tmp_path / ".cA.tmp-a.lock").is_file() and (tmp_path / ".cA.tmp-a.partial-0123456789abcdef").is_dir()
    assert (tmp_path / ".cA.old-x.tmp-b").is_dir()


def test_an_artifact_reached_through_a_link_finds_its_inputs_and_a_link_is_no_output(tmp_path):
    """Inputs are stored relative to the folder an artifact really lies in: read through a link in
    another folder they were looked for beside the link ("not found"), and an -o check meant to spare
    them could be passed by the link. A link as -o would be replaced itself, not what it names."""
    from llmkit import outputs
    from llmkit.errors import UserError

    with artifacts.create(tmp_path / "corpus", "corpus") as build:
        (build.dir / "a.txt").write_text("text")
    with artifacts.create(tmp_path / "tok", "tokenizer") as build:
        (build.dir / "t.json").write_text("{}")
        build.add_input("corpus", artifacts.load(tmp_path / "corpus"))
    (tmp_path / "elsewhere").mkdir()
    (tmp_path / "elsewhere" / "tok").symlink_to(tmp_path / "tok")
    through_link = artifacts.load(tmp_path / "elsewhere" / "tok")
    assert through_link.input("corpus").path.resolve() == (tmp_path / "corpus").resolve()
    with pytest.raises(UserError, match="is a symbolic link .*; give the folder it names, or another path"):
        outputs.check_output(tmp_path / "elsewhere" / "tok", force=True)
    (tmp_path / "a-file").write_text("x")  # (a link to a file names no folder to give)
    (tmp_path / "link-to-a-file").symlink_to(tmp_path / "a-file")
    with pytest.raises(UserError, match=r"is a symbolic link \(to .*a-file\); give another path$"):
        outputs.check_output(tmp_path / "link-to-a-file", force=True)
    with pytest.raises(UserError, match=r"ends in '\.\.'; give the output a name of its own \(such as .*/\.\./NAME\)"):
        outputs.check_output(tmp_path / "corpus" / "sub" / "..", force=True)
    # a file output's path in UTF-8 too, as a folder output's (its records and notes name it)
    with pytest.raises(UserError, match="the path is not UTF-8"):
        outputs.check_output_file(Path(os.fsdecode(os.path.join(os.fsencode(tmp_path), b"out\xe9.jsonl"))), force=False)


def test_an_output_that_is_an_input_by_another_path_is_refused(tmp_path):
    """resolve() keeps a bind mount's two paths (or two letter cases on a case-insensitive disk) apart;
    the file system's identity does not: here a hard link, the same file by a second path."""
    from llmkit import outputs
    from llmkit.errors import UserError

    (tmp_path / "prompts.txt").write_text("Once\n")
    os.link(tmp_path / "prompts.txt", tmp_path / "same.txt")
    with pytest.raises(UserError, match="would overwrite the stage.s input"):
        outputs.check_output_file(tmp_path / "same.txt", force=True, inputs=[tmp_path / "prompts.txt"])


def test_an_interrupt_between_the_renames_of_a_force_replacement_keeps_the_old_artifact(tmp_path, monkeypatch):
    """Ctrl-C can land between moving the old artifact aside and renaming the new one in: the old one
    goes back; and if the process died there, the next run on the output puts it back, not deletes it."""
    def make(payload, force=False):
        with artifacts.create(tmp_path / "out", "corpus", force=force) as build:
            (build.dir / "x.txt").write_text(payload)

    make("old")
    real = os.replace

    def interrupted_after_moving_aside(src, dst):
        real(src, dst)
        if ".old-" in str(dst):
            raise KeyboardInterrupt

    monkeypatch.setattr(os, "replace", interrupted_after_moving_aside)
    with pytest.raises(KeyboardInterrupt):
        make("new", force=True)
    monkeypatch.setattr(os, "replace", real)
    assert (tmp_path / "out" / "x.txt").read_text() == "old"
    # killed outright at that moment: only the copy aside is left, and the next run's lock restores it
    aside = tmp_path / ".out.old-killed"
    aside.mkdir()
    os.replace(tmp_path / "out", aside / "out")
    from llmkit.errors import UserError

    with pytest.raises(UserError, match="already exists"):
        make("newer")
    assert (tmp_path / "out" / "x.txt").read_text() == "old" and not aside.exists()


def test_a_manifest_number_past_pythons_digit_limit_is_not_valid_json_in_one_line(tmp_path):
    from llmkit.errors import UserError

    with artifacts.create(tmp_path / "a", "corpus") as build:
        (build.dir / "x.txt").write_text("x")
    manifest = tmp_path / "a" / "manifest.json"
    manifest.write_text(manifest.read_text().replace('"kind": "corpus",', '"kind": "corpus", "x": ' + "9" * 5000 + ",", 1))
    assert "9" * 5000 in manifest.read_text()
    with pytest.raises(UserError, match="is not valid JSON"):
        artifacts.load(tmp_path / "a")


def test_a_manifest_that_would_switch_the_load_checks_off_is_refused(tmp_path):
    """An entry left out of `sizes` (unhashed) turned the size check off for its file; a name such as
    './b.bin' or one with a NUL, and format version 0, passed as well."""
    corpus = make(tmp_path / "corpus")
    manifest = json.loads((corpus.path / "manifest.json").read_text())
    for change, said in ((lambda m: m["sizes"].pop("b.bin"), "its 'sizes' leave out 'b.bin'"),
                         (lambda m: m["files"].__setitem__("./b.bin", m["files"].pop("b.bin")), "'./b.bin', which is not the path"),
                         (lambda m: m["files"].__setitem__("a\x00b", m["files"]["b.bin"]), "which is not the path of a file"),
                         (lambda m: m.__setitem__("format_version", 0), "format_version 0 is none llmkit wrote")):
        edited = json.loads(json.dumps(manifest))
        change(edited)
        (corpus.path / "manifest.json").write_text(json.dumps(edited))
        with pytest.raises(UserError, match=re.escape(said)):
            artifacts.load(corpus.path)
    (corpus.path / "manifest.json").write_text(json.dumps(manifest))
    assert artifacts.verify(corpus.path).ok


def test_the_names_a_run_folder_may_hold_follow_the_stages_own(tmp_path):
    """--force tells an unmarked run from a project folder by its entries (outputs._RUN_ENTRIES, spelled
    out there to keep llmkit.outputs free of torch); a file a run writes under a new name must be one of
    them, or --force refuses the runs that hold it."""
    from llmkit.model.io import MODEL_CONFIG, TOKENIZER_DIR, WEIGHTS
    from llmkit.model.records import TASK_FILE
    from llmkit.sweep_table import TABLE
    from llmkit.train.checkpoint import CHECKPOINTS
    from llmkit.train.metrics import METRICS

    named = {WEIGHTS, MODEL_CONFIG, TOKENIZER_DIR, TASK_FILE, TABLE, CHECKPOINTS, METRICS, artifacts.SWEEP_RUNS,
             *artifacts.STATE_FILE_NAMES}
    assert named <= outputs._RUN_ENTRIES, named - outputs._RUN_ENTRIES


def test_a_sweep_table_that_holds_no_list_of_runs_is_named(tmp_path):
    """runs.json of `{}` read as no runs (scaling fit then blamed validation); a sweep whose table is in its
    stats only is named by them, not by a runs.json it does not have."""
    from llmkit.inspect_view import _headline
    from llmkit.sweep_table import TABLE, read_rows

    row = {"name": "a", "state": "done", "params": 10, "non_embedding_params": 8, "tokens": 100, "final_val_loss": 2.5}
    for table, said in (({}, f"{TABLE} holds no list of runs; check it with llmkit verify"),
                        ([{"name": "a"}], f"{TABLE} holds no list of runs")):
        out = tmp_path / f"sweep-{len(said)}-{len(str(table))}"
        with artifacts.create(out, "sweep") as build:
            (build.dir / TABLE).write_text(json.dumps(table))
            build.stats = {"runs": [row]}
        with pytest.raises(UserError, match=re.escape(said)):
            read_rows(artifacts.load(out))
        with pytest.raises(UserError, match=re.escape(f"{TABLE} damaged or changed since written: llmkit verify names it")):
            _headline(artifacts.load(out))
    with artifacts.create(tmp_path / "old", "sweep") as build:
        build.stats = {"runs": "nothing"}
    with pytest.raises(UserError, match=r"the stats of .*manifest.json \(a sweep made before runs.json\) holds no list of runs; sweep again"):
        read_rows(artifacts.load(tmp_path / "old"))
    with artifacts.create(tmp_path / "good", "sweep") as build:
        (build.dir / TABLE).write_text(json.dumps([row]))
    assert [r.name for r in read_rows(artifacts.load(tmp_path / "good"))] == ["a"]


def test_a_resume_marker_write_that_fails_leaves_no_temporary(tmp_path, monkeypatch):
    """A full disk mid-save: the marker before it stays whole and no half-written temporary is left (it was
    not among the names resume.remove clears, and stayed in the finished artifact)."""
    import errno

    import numpy as np

    from llmkit import resume

    resume.save(tmp_path, {"step": 1}, {"a": np.arange(3)})

    def full_disk(*args, **kwargs):
        raise OSError(errno.ENOSPC, "No space left on device")

    monkeypatch.setattr(np, "savez", full_disk)
    with pytest.raises(OSError):
        resume.save(tmp_path, {"step": 2}, {"a": np.arange(4)})
    monkeypatch.undo()
    state, arrays = resume.load(tmp_path)
    assert state["step"] == 1 and arrays["a"].tolist() == [0, 1, 2]
    assert not [p.name for p in tmp_path.iterdir() if p.name.startswith(".")]
    resume.remove(tmp_path)
    assert not list(tmp_path.iterdir())


def test_a_file_hashed_as_read_is_not_hashed_again_until_it_changes(tmp_path, monkeypatch):
    """The digest of a file found equal to its manifest's is cached by the file's place, size, times and
    inode: a second load reads it without hashing it (400 MB of weights: 0.37 s a load otherwise); a file
    changed since (its change time moves, whatever its content) is hashed again, and refused."""
    monkeypatch.setenv("LLMKIT_CACHE", str(tmp_path / "cache"))
    corpus = make(tmp_path / "corpus")
    hashed = []
    real = artifacts.sha256_file
    monkeypatch.setattr(artifacts, "sha256_file", lambda path, *a: hashed.append(Path(path).name) or real(path, *a))
    target = corpus.path / "b.bin"
    for _ in range(2):  # written just now: not remembered (an edit in the same clock tick would keep the key)
        with artifacts.checked_as_read(target):
            target.read_bytes()
    assert hashed == ["b.bin", "b.bin"]
    hashed.clear()
    monkeypatch.setattr(artifacts, "SETTLED_SECONDS", 0.0)  # (its times as old as they need be)
    for _ in range(3):
        with artifacts.checked_as_read(target):
            target.read_bytes()
    assert hashed == ["b.bin"]
    data = target.read_bytes()
    target.write_bytes(data)  # the same bytes written again: another change time, hashed again (and equal)
    with artifacts.checked_as_read(target):
        pass
    assert hashed == ["b.bin", "b.bin"]
    target.write_bytes(data.upper())  # changed, the size kept
    with pytest.raises(UserError, match="was changed after the artifact"):
        with artifacts.checked_as_read(target):
            pass
    # a cache entry that names another digest (a stale or forged one) is no pass: the file is hashed
    target.write_bytes(data)
    entry = artifacts._hashed_entry(artifacts._file_key(target))
    entry.parent.mkdir(parents=True, exist_ok=True)
    entry.write_text("0" * 64)
    with artifacts.checked_as_read(target):
        pass
    assert hashed[-1] == "b.bin" and len(hashed) == 4
    # something else where an entry goes (a pipe would block a read, a link lead anywhere): no entry, hashed
    entry.unlink()
    os.mkfifo(entry)
    with artifacts.checked_as_read(target):
        pass
    assert len(hashed) == 5


def test_an_artifact_without_recorded_sizes_says_its_files_are_not_checked_as_read(tmp_path, capsys):
    """A manifest made before sizes were recorded (or with its `sizes` deleted: not hashed) turned
    every load-time size check off without a word: a token shard cut in half was evaluated under the
    artifact's fingerprint. It loads, with a note naming verify, once a process."""
    out = tmp_path / "corpus"
    make(out)
    manifest = json.loads((out / "manifest.json").read_text())
    del manifest["sizes"]
    (out / "manifest.json").write_text(json.dumps(manifest))
    artifacts.load(out)
    artifacts.load(out)
    said = " ".join(capsys.readouterr().err.split())
    assert said.count("was made before manifests recorded their files' sizes") == 1 and "llmkit verify checks it" in said
    make(tmp_path / "sized")
    artifacts.load(tmp_path / "sized")
    assert "sizes" not in capsys.readouterr().err
