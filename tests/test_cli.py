"""The CLI shell: help, version, one-line errors, inspect and verify, config resolution."""

from __future__ import annotations

import dataclasses
import json
import shutil
import subprocess
import sys

import pytest
import typer

from llmkit import __version__, artifacts, config
from llmkit.errors import UserError
from llmkit.options import Options, option

STAGES = ["clean", "tokenizer", "tokenize", "pretrain", "finetune", "generate", "eval", "inspect", "verify"]


def _corpus(path):
    with artifacts.create(path, "corpus") as build:
        (build.dir / "a.txt").write_text("text")
        build.config = {"preset": "default"}
        build.seed = 3
        build.stats = {"documents": 1}
    return path


def test_help_lists_every_stage_and_version(cli):
    result = cli("--help")
    assert result.exit_code == 0
    for stage in STAGES:
        assert stage in result.output
    # in the order a first run takes them: tokenizer (train) between clean and tokenize (it came last)
    listed = [line.split()[1] for line in result.output.splitlines() if line.startswith("│ ") and line[2:3].isalpha()]
    assert listed.index("clean") + 1 == listed.index("tokenizer") == listed.index("tokenize") - 1, listed
    version = cli("--version")
    assert version.exit_code == 0 and __version__ in version.output


def test_every_command_has_help(cli):
    for args in (["clean"], ["tokenizer", "train"], ["tokenize"], ["pretrain"], ["generate"], ["eval"], ["inspect"],
                 ["verify"], ["report"], ["tokenizer", "encode"], ["tokenizer", "decode"]):
        result = cli(*args, "--help")
        assert result.exit_code == 0, (args, result.output)
        assert "--help" in result.output
        assert "[default: None]" not in result.output, (args, result.output)  # (a required argument's: said of five)


def test_command_summaries_are_whole_sentences():
    """rich keeps a docstring's line breaks, which cut the command list's summaries mid-sentence
    (pretrain's "... or go on" then "from a checkpoint's weights" on a line of its own)."""
    from llmkit.cli import stage_commands

    for path, command in stage_commands().items():
        assert all("\n" not in paragraph for paragraph in command.__doc__.split("\n\n")), path


def test_a_command_line_imports_only_the_command_it_names():
    """`llmkit tokenize ...` imported every stage's options to build the whole app first (0.33
    against 0.27 CPU-s to start); help and unknown commands still get the whole app."""
    import subprocess
    import sys

    from llmkit.cli import named_command

    assert named_command(["tokenize", "c", "-t", "t"]) == {"tokenize"}
    assert named_command(["--debug", "tokenizer", "train", "c"]) == {"tokenizer train"}
    assert named_command(["scaling", "predict"]) == {"scaling predict"}
    assert named_command(["inspect", "x"]) == set()
    for whole in (["--help"], [], ["tokenizer"], ["tokenizer", "nonesuch"], ["nonesuch"], ["--version"]):
        assert named_command(whole) is None, whole
    probe = ("import sys; from llmkit.cli import build_app, named_command; "
             "app = build_app(named_command(['tokenize', '--help'])); "
             "print(sorted(m for m in sys.modules if m.startswith('llmkit.')))")
    loaded = subprocess.run([sys.executable, "-c", probe], capture_output=True, text=True, check=True).stdout
    others = ("corpus", "pretrain", "finetune", "generate", "eval", "interop", "sweep", "scaling", "plot", "average", "plan")
    assert "llmkit.tokenizer.command" in loaded and not any(f"'llmkit.{stage}." in loaded for stage in others), loaded
    result = subprocess.run([sys.executable, "-m", "llmkit.cli", "tokenize", "--help"], capture_output=True, text=True)
    assert result.returncode == 0 and "--val-fraction" in result.stdout


def test_inspect_shows_the_lineage_tree(cli, tmp_path, monkeypatch):
    """Inputs of inputs, each under the artifact that read it: tokens <- corpus, tokenizer <- corpus;
    an input rebuilt since is marked."""
    from llmkit import console

    monkeypatch.setattr(console.out, "_width", 400)  # a node's line whole, its path being long
    def make(path, kind, inputs=()):
        with artifacts.create(path, kind) as build:
            (build.dir / "a.txt").write_text(kind)
            for role, art in inputs:
                build.add_input(role, artifacts.load(art))
        return path

    corpus = _corpus(tmp_path / "corpus")
    tok = make(tmp_path / "tok", "tokenizer", [("corpus", corpus)])
    tokens = make(tmp_path / "tokens", "tokens", [("corpus", corpus), ("tokenizer", tok)])
    result = cli("inspect", tokens)
    assert result.exit_code == 0, result.output
    lines = [line for line in result.output.splitlines() if "corpus:" in line or "tokenizer:" in line]
    fingerprint = artifacts.load(corpus).fingerprint[:12]
    assert len(lines) == 3, result.output  # the corpus twice: the tokens' input, and the tokenizer's
    assert "corpus: corpus" in lines[0] and fingerprint in lines[0]
    assert "tokenizer: tokenizer" in lines[1] and artifacts.load(tok).fingerprint[:12] in lines[1]
    assert "corpus: corpus" in lines[2] and fingerprint in lines[2]
    indent = [len(line) - len(line.lstrip(" │├└─")) for line in lines]
    assert indent[0] == indent[1] < indent[2], lines  # the tokenizer's corpus one level down
    with artifacts.create(corpus, "corpus", force=True) as build:  # rebuilt from other text
        (build.dir / "a.txt").write_text("other text")
    shown = cli("inspect", tokens).output
    assert shown.count("replaced since") == 2, shown  # (where the tokens and the tokenizer name it)


def test_inspect_shows_manifest_and_lineage(cli, tmp_path):
    corpus = _corpus(tmp_path / "corpus")
    result = cli("inspect", corpus)
    assert result.exit_code == 0, result.output
    assert "corpus artifact" in result.output and artifacts.load(corpus).fingerprint[:12] in result.output
    assert "state files" not in result.output
    # a checkpoint's resume state: hashed and verified, so counted where inspect counts files (verify said 2 more)
    with artifacts.create(tmp_path / "ckpt", "checkpoint") as build:
        (build.dir / "model.safetensors").write_bytes(b"weights")
        (build.dir / "training_state.json").write_text("{}")
        build.state_names.add("training_state.json")
        build.config = {"n_layer": None, "lr": 0.001}
        build.stats = {"model": {"arch": "gpt", "n_layer": 4, "rope": {"theta": 10000.0}}, "shards": ["a", "b"]}
    shown = " ".join(cli("inspect", tmp_path / "ckpt").output.replace("│", " ").split())
    assert "files 1: model.safetensors" in shown and "state files 1: training_state.json" in shown, shown
    # a record within a record: a row each (the model's shape was one line of JSON, cut at 100 characters);
    # an option left out says what null means
    for row in ("stats.model.arch gpt", "stats.model.n_layer 4", "stats.model.rope.theta 10000.0", 'stats.shards ["a", "b"]',
                "config.n_layer null (default)", "config.lr 0.001"):
        assert row in shown, (row, shown)
    assert "2 files match" in " ".join(cli("verify", tmp_path / "ckpt").output.split())
    as_json = cli("inspect", corpus, "--json")
    assert json.loads(as_json.output)["kind"] == "corpus"
    # the raw manifest: a field this version does not know is shown too (it was dropped)
    manifest = json.loads((corpus / "manifest.json").read_text())
    (corpus / "manifest.json").write_text(json.dumps({**manifest, "extra": {"by": "a later version"}}))
    assert json.loads(cli("inspect", corpus, "--json").output)["extra"] == {"by": "a later version"}
    # an edited field the loader refuses: printed, and exit 1 as inspect's (it exited 0); a later format: printed, 0
    for edit, code in (({"seed": 1.5}, 1), ({"config": {**manifest["config"], "edited": 1}}, 1), ({"format_version": 9}, 0)):
        (corpus / "manifest.json").write_text(json.dumps({**manifest, **edit}))
        result = cli("inspect", corpus, "--json")
        assert result.exit_code == code and json.loads(result.stdout) == {**manifest, **edit}, result.output
        assert (result.exit_code == cli("inspect", corpus).exit_code) == (code == 1)
    # a damaged manifest is printed as it is, and exits 1 (it exited 0; a non-UTF-8 one was an "unexpected" error)
    for damage in (b"{bad", b'{"kind": "\xff"}', b"[1]", b'{"name": "another tool"}'):
        (corpus / "manifest.json").write_bytes(damage)
        result = cli("inspect", corpus, "--json")
        assert result.exit_code == 1 and result.stdout_bytes == damage, result.output
        assert "manifest.json is not an llmkit manifest (a JSON object in UTF-8 naming its kind; printed as it is)" in result.stderr


def test_inspect_shows_the_whole_command_as_typed(cli, tmp_path, monkeypatch):
    """The command is how to make the artifact again: never cut short, brackets not read as markup,
    a word with a space quoted so that the line pastes back as it was typed."""
    import shlex

    typed = ["llmkit", "clean", "data/[draft]/my book.txt", *[f"--option-{i}=value-{i}" for i in range(30)]]
    monkeypatch.setattr(sys, "argv", typed)
    corpus = _corpus(tmp_path / "corpus")
    shown = "".join(cli("inspect", corpus).output.replace("│", " ").split())
    assert "".join(shlex.join(typed).split()) in shown and "'data/[draft]/my" in shown


@pytest.mark.parametrize("folder", ["o[/x]", "runs/[v2]", "[bold]"])
def test_paths_and_recorded_text_are_printed_as_typed(cli, tmp_path, folder):
    """Brackets in a path or a recorded value are text, not rich markup: "[/x]" crashed inspect, verify
    and report (and failed a stage after it had written its output); "[v2]" vanished from what was shown."""
    path = tmp_path / folder / "corpus"
    path.parent.mkdir(parents=True)
    with artifacts.create(path, "corpus") as build:
        (build.dir / "a.txt").write_text("text")
        build.config = {"prompt_template": "[INST] {prompt} [/INST]"}
    for command in ("inspect", "verify", "report"):
        result = cli(command, path)
        flat = "".join(result.output.replace("│", "").split())
        assert result.exit_code == 0 and folder.replace(" ", "") in flat, (command, result.output)
    assert "[INST]{prompt}[/INST]" in "".join(cli("inspect", path).output.replace("│", "").split())
    source = tmp_path / folder / "book.txt"
    source.write_text("One document.\n\nAnother one, a little longer than the first.\n")
    cleaned = cli("clean", source, "-o", tmp_path / folder / "cleaned")
    assert cleaned.exit_code == 0 and str(tmp_path / folder / "cleaned") in "".join(cleaned.output.split()), cleaned.output


def test_verify_exit_codes(cli, tmp_path):
    corpus = _corpus(tmp_path / "corpus")
    assert cli("verify", corpus).exit_code == 0
    (corpus / "a.txt").write_text("changed")
    result = cli("verify", corpus)
    assert result.exit_code == 1
    assert "changed file: a.txt" in result.output
    assert "rebuild it with the stage that made it" in result.output.strip().splitlines()[-1]


def test_verify_takes_several_artifacts_and_prints_json(cli, tmp_path):
    """`llmkit verify runs/demo/*`: each is checked, the good ones said ok, the exit non-zero when any
    fails, naming those; --json gives one object per artifact for scripts."""
    first, second = _corpus(tmp_path / "first"), _corpus(tmp_path / "second")
    result = cli("verify", first, second)
    assert result.exit_code == 0 and result.output.count(" 1 file matches, fingerprint matches") == 2, result.output
    (second / "a.txt").write_text("changed")
    result = cli("verify", first, tmp_path / "missing", second)
    said = " ".join(result.output.split())
    assert result.exit_code == 1 and f"ok {first}: 1 file matches" in said and "changed file: a.txt" in said, said
    assert f"no such artifact: {tmp_path / 'missing'}" in said, said
    assert f"2 of 3 artifacts failed verification: {tmp_path / 'missing'}, {second}" in said, said
    result = cli("verify", "--json", first, tmp_path / "missing", second)
    assert result.exit_code == 1
    records = json.loads(result.stdout)
    assert [(r["path"], r["ok"]) for r in records] == [(str(first), True), (str(tmp_path / "missing"), False), (str(second), False)]
    assert records[0]["files"] == 1 and records[0]["problems"] == [] and records[0]["error"] is None
    # a folder of artifacts is verified as they are (a recipe's runs/NAME); a stray folder among several (the
    # quickstart's qa/ beside its artifacts: `verify runs/quickstart/*` failed a fresh demo) is skipped with a note
    (second / "a.txt").write_text((first / "a.txt").read_text())
    (tmp_path / "qa").mkdir()
    (tmp_path / "bitext.txt").write_text("a stray file (the translation recipe's)\n")
    result = cli("verify", tmp_path / "first", tmp_path / "qa", tmp_path / "second", tmp_path / "bitext.txt")
    said = " ".join(result.output.split())
    assert result.exit_code == 0 and said.count("fingerprint matches") == 2, said
    assert f"skipped {tmp_path / 'qa'}: a folder without a manifest, not an llmkit artifact" in said, said
    assert f"skipped {tmp_path / 'bitext.txt'}: a file, not an llmkit artifact" in said, said
    assert cli("verify", tmp_path / "bitext.txt").exit_code == 1  # (alone: its one line, a failure)
    (tmp_path / "bitext.txt").unlink()
    folder = cli("verify", tmp_path)
    assert folder.exit_code == 0 and " ".join(folder.output.split()).count("fingerprint matches") == 2, folder.output
    assert cli("verify", tmp_path / "qa").exit_code == 1  # (alone: its one line, a failure)
    # nothing to verify is no pass (a CI's `verify out/*` after a build that wrote no artifact); an unfinished training
    # run among several is no stray: it fails (it passed, skipped)
    strays = cli("verify", tmp_path / "qa", tmp_path / "qa")
    assert strays.exit_code == 1 and "nothing was verified" in strays.output, strays.output
    (tmp_path / "killed").mkdir()
    (tmp_path / "killed" / ".llmkit-run").touch()
    killed = cli("verify", tmp_path / "first", tmp_path / "killed")
    assert killed.exit_code == 1 and "1 of 2 artifacts failed verification" in " ".join(killed.output.split()), killed.output
    assert cli("verify", tmp_path).exit_code == 1  # (inside a folder of artifacts too)
    (tmp_path / "killed" / ".llmkit-run").unlink()
    (tmp_path / "killed").rmdir()
    (second / "a.txt").write_text("changed")
    alone = cli("verify", "--json", tmp_path / "missing")  # (one path: still the JSON, for a script's parser)
    assert alone.exit_code == 1 and json.loads(alone.stdout)[0]["ok"] is False, alone.output
    assert records[1]["problems"] == [] and records[1]["files"] == 0  # (every row has every key)
    assert "no such artifact" in records[1]["error"] and records[2]["problems"] == ["changed file: a.txt (sha256 differs from the manifest)"]


def test_verify_says_to_remove_files_added_to_a_whole_artifact(cli, tmp_path):
    """A file added beside the listed ones (which a stage could read) fails verification; when that is
    all, the fix is to remove it, not to rebuild the artifact."""
    tokenizer = tmp_path / "tok"
    with artifacts.create(tokenizer, "tokenizer") as build:
        (build.dir / "tokenizer").mkdir()
        (build.dir / "tokenizer" / "tokenizer.json").write_text("{}")
    (tokenizer / "tokenizer" / "extra.json").write_text("{}")
    result = cli("verify", tokenizer)
    lines = result.output.strip().splitlines()
    assert result.exit_code == 1 and "unlisted file: tokenizer/extra.json" in result.output, result.output
    assert "files were added to it; remove them" in lines[-1]
    (tokenizer / "tokenizer" / "tokenizer.json").write_text("{ }")  # and damage too: rebuild
    assert "rebuild it with the stage that made it" in cli("verify", tokenizer).output.strip().splitlines()[-1]


def test_errors_are_one_line_without_traceback(cli, tmp_path):
    result = cli("inspect", tmp_path / "nope")
    assert result.exit_code == 1
    lines = [line for line in result.output.splitlines() if line.strip()]
    assert len(lines) == 1 and lines[0].startswith("error: no such artifact")
    assert "Traceback" not in result.output


def test_running_out_of_gpu_memory_is_one_line_with_the_fix():
    """torch's OutOfMemoryError is a RuntimeError, not a MemoryError: it read "(unexpected)"."""
    import torch

    from llmkit.errors import one_line

    line = one_line(torch.OutOfMemoryError("CUDA out of memory. Tried to allocate 9.60 GiB. GPU 0 has a total capacity of "
                                           "139.81 GiB of which 2.1 GiB is free."))
    assert line == ("out of GPU memory (it asked for 9.60 GiB more); use a smaller --batch-size or --micro-batch, a "
                    "shorter input, or a smaller model")


def test_debug_shows_the_traceback(tmp_path):
    proc = subprocess.run(
        [sys.executable, "-m", "llmkit.cli", "--debug", "inspect", str(tmp_path / "nope")],
        capture_output=True,
        text=True,
    )
    assert proc.returncode != 0
    assert "Traceback" in proc.stderr and "UserError" in proc.stderr
    plain = subprocess.run(
        [sys.executable, "-m", "llmkit.cli", "inspect", str(tmp_path / "nope")], capture_output=True, text=True
    )
    assert plain.returncode == 1 and "Traceback" not in plain.stderr
    assert plain.stderr.strip().startswith("error:")


def _closed_reader(args, stream: str, tmp_path) -> subprocess.CompletedProcess:
    """The command with its stdout or stderr a pipe whose reader has gone (`llmkit ... | head`)."""
    import os

    read, write = os.pipe()
    os.close(read)
    pipe = {stream: write}
    proc = subprocess.run([sys.executable, "-m", "llmkit.cli", *map(str, args)], cwd=tmp_path, capture_output=False,
                          stdout=pipe.get("stdout", subprocess.PIPE), stderr=pipe.get("stderr", subprocess.PIPE))
    os.close(write)
    return proc


def test_a_reader_that_closes_the_pipe_ends_the_results_not_the_work(tmp_path):
    """A closed stdout: the reader has all it wanted, exit 0 (rich would exit 1 itself). A closed
    stderr carried only progress and notes: the stage goes on and makes its artifact."""
    corpus = _corpus(tmp_path / "corpus")
    assert _closed_reader(["inspect", corpus], "stdout", tmp_path).returncode == 0
    for help_of in (["--help"], ["pretrain", "--help"], ["tokenizer", "--help"]):  # (typer's console: exit 1 until 2026-12-05)
        closed = _closed_reader(help_of, "stdout", tmp_path)
        assert (closed.returncode, closed.stderr) == (0, b""), help_of
    (tmp_path / "book.txt").write_text("To be, or not to be, that is the question.\n\nWhether tis nobler in the mind.\n")
    done = _closed_reader(["clean", tmp_path / "book.txt", "-o", tmp_path / "clean"], "stderr", tmp_path)
    assert done.returncode == 0 and artifacts.load(tmp_path / "clean").kind == "corpus"


def test_a_socket_whose_reader_left_is_a_reader_gone_too(tmp_path):
    """Node's child_process and many runners give a child a socket as stdout: its reader leaving
    says POLLHUP where a pipe's says POLLERR (the first version read only POLLERR: exit 1)."""
    import socket

    mine, theirs = socket.socketpair()
    theirs.close()
    try:
        proc = subprocess.run([sys.executable, "-m", "llmkit.cli", "plan", "--model", "tiny", "--json"], stdout=mine.fileno(),
                              stderr=subprocess.PIPE, text=True)
    finally:
        mine.close()
    assert (proc.returncode, proc.stderr) == (0, ""), proc.stderr


def test_a_broken_pipe_that_is_not_stdouts_is_a_failure(monkeypatch, tmp_path):
    """Any BrokenPipeError ended the command with exit 0 and no word, as if the reader of stdout
    had gone: a socket's or a worker's pipe breaking is a failure like any other."""
    from typer.testing import CliRunner

    from llmkit import cli

    def broken(*_, **__):
        raise BrokenPipeError(32, "Broken pipe")

    monkeypatch.setattr("llmkit.artifacts.load", broken)
    result = CliRunner().invoke(cli.app, ["inspect", str(tmp_path)])
    assert result.exit_code == 1 and "error: BrokenPipeError" in result.output, result.output


@dataclasses.dataclass
class _StageConfig(Options):
    vocab_size: int = option(100, "Vocabulary size.")
    lr: float = option(1e-3, "Learning rate.")
    name: str = option("x", "A name.")


def test_config_resolution_order(tmp_path):
    toml = tmp_path / "c.toml"
    toml.write_text('[tokenizer]\nvocab_size = 500\nlr = 1\n[pretrain]\nmax_steps = 7\n')
    resolved = config.resolve(_StageConfig, file=toml, section="tokenizer", explicit={"vocab_size": 900})
    assert resolved == _StageConfig(vocab_size=900, lr=1.0, name="x")
    yaml_file = tmp_path / "c.yaml"
    yaml_file.write_text("name: y\n")
    assert config.resolve(_StageConfig, file=yaml_file).name == "y"
    yaml_file.write_text("lr: 3e-4\nname: 1e5x\n")  # YAML 1.2's exponent floats (PyYAML's 1.1 reads 3e-4 as text)
    assert config.resolve(_StageConfig, file=yaml_file) == _StageConfig(lr=3e-4, name="1e5x")
    from llmkit.sweep.config import SweepConfig  # a list option given one number reads as the flag typed once

    for name, text in (("s.yaml", "sweep:\n  tokens: 8e3\n  sizes: 1x16\n"), ("s.toml", "[sweep]\ntokens = 8e3\nsizes = '1x16'\n"),
                       ("t.yaml", "tokens: '8e3,2e4'\nsizes: 1x16\n")):
        (tmp_path / name).write_text(text)
        assert config.resolve(SweepConfig, file=tmp_path / name, section="sweep").token_budgets[0] == 8e3, name
    from llmkit.generate.config import GenerateConfig  # a number for a list of text is not turned into other text

    (tmp_path / "p.toml").write_text("prompt = 1e3\n")
    with pytest.raises(UserError, match="--prompt must be a list of text, got 1000.0"):
        config.resolve(GenerateConfig, file=tmp_path / "p.toml")
    bad = tmp_path / "bad.toml"
    bad.write_text("vocab_sise = 3\n")
    with pytest.raises(UserError, match="unknown option.*vocab_sise"):
        config.resolve(_StageConfig, file=bad)
    with pytest.raises(UserError, match="not found"):
        config.resolve(_StageConfig, file=tmp_path / "missing.toml")


@pytest.mark.parametrize("args,says", [
    (["inspect", "--no-such-option"], "No such option: --no-such-option (see llmkit inspect --help)"),
    (["pretrain", "tokens"], "Missing option '-o' / '--out' (see llmkit pretrain --help)"),
    (["pretrain"], "Missing argument 'tokens' (see llmkit pretrain --help)"),
    (["tokenizer", "trian"], "Did you mean 'train'? (see llmkit tokenizer --help)"),
    (["--no-such-option"], "No such option: --no-such-option (see llmkit --help)"),
    (["tokenize", "corpus", "-o"], "Option '-o' requires an argument (see llmkit tokenize --help)"),
    (["inspect", "x", "--debug"], "--debug is llmkit's own option: put it before the command (llmkit --debug inspect)"),
    (["tokenizer", "--debug", "encode", "x"], "put it before the command (llmkit --debug tokenizer ...)"),
    (["inspect", "x", "--debugging", "--debug"], "No such option: --debugging"),  # (not taken for --debug)
    # the options a slip most likely meant: another spelling, the start of a name, a slip or two (best first, up to
    # three, hidden ones left out); none where nothing is close (click offered --out for --bogus, and --force beside
    # --workers for --workres)
    (["tokenize", "x", "--workres", "2"], "No such option: --workres; did you mean --workers? (see llmkit tokenize --help)"),
    (["generate", "x", "--tem", "1"], "No such option: --tem; did you mean --temperature? (see"),
    (["finetune", "x", "--lora_rank", "2"], "No such option: --lora_rank; did you mean --lora-rank? (see"),
    (["finetune", "x", "--batch", "2"], "No such option: --batch; did you mean --batch-size or --batch-invariant? (see"),
    (["plan", "--gup", "cpu"], "No such option: --gup; did you mean --gpu? (see"),
    (["generate", "--hepl"], "No such option: --hepl; did you mean --help? (see"),
    (["generate", "--bogus"], "No such option: --bogus (see llmkit generate --help)"),
    # another tool's word, no spelling near (--preset was offered --resume)
    (["pretrain", "x", "--preset", "tiny"], "No such option: --preset; did you mean --model? (see"),
    (["pretrain", "x", "--batch-size", "8"], "No such option: --batch-size; did you mean --batch-tokens or --micro-batch? (see"),
    (["pretrain", "x", "--max-iters", "8"], "No such option: --max-iters; did you mean --max-steps? (see"),
    (["pretrain", "x", "--grad-accum", "4"], "No such option: --grad-accum; accumulation is derived: --batch-tokens / (--micro-batch"),
    (["generate", "x", "--max-length", "4"], "No such option: --max-length; did you mean --max-new-tokens? (see"),
    # one dash: click read -temperature as -t -e ... and named -t alone
    (["generate", "x", "-temperature", "1"], "No such option: -temperature; did you mean --temperature? (see"),
    (["generate", "x", "-q"], "No such option: -q (see llmkit generate --help)"),
    (["generate", "x", "-temperature=0.5"], "No such option: -temperature; did you mean --temperature? (see"),
    # ... one that starts with a short option taking a value (click read -prompt as -p "rompt")
    (["generate", "x", "-prompt", "The king"], "No such option: -prompt; did you mean --prompt? (see"),
    (["generate", "x", "-p", "hi", "-seed=3"], "No such option: -seed; did you mean --seed? (see"),
    (["generate", "x", "-p", "hi", "-output=x.jsonl"], "No such option: -output; did you mean --out"),  # (a hidden alias)
    (["generate", "x", "-p", "hi", "-no-stream"], "No such option: -no-stream; did you mean --no-stream? (see"),
    (["generate", "x", "-help"], "No such option: -help; did you mean --help? (see"),
    (["tokenizer", "-train", "x"], "No such option: -train; did you mean the command llmkit tokenizer train? (see"),
    (["-clean", "x"], "No such option: -clean; did you mean the command llmkit clean? (see"),
    (["generate", "x", "-p", "-the king", "-temperature", "1"], "No such option: -temperature; did you mean --temperature?"),
    (["sweep", "x", "--max-steps-", "3"], "No such option: --max-steps-; did you mean --min-steps? (see"),  # (not the hidden --max-steps)
    # a group's command typed without its group is named with it
    (["encode", "x"], "No such command 'encode'. Did you mean 'llmkit tokenizer encode'?"),
    (["trian"], "Did you mean 'pretrain' or 'llmkit tokenizer train'?"),
    # a bad value that the stage, not the parser, finds is a usage error too
    (["plan", "--model", "foo"], "--model 'foo' is not a model preset; choose one of"),
    (["average", "a", "-o", "b"], "give at least two checkpoints to average"),
    # click reads -o=x as the path "=x" (a folder of that name was written)
    (["tokenizer", "encode", "tok", "-5"], "No such option: -5; a text or id that starts with - goes after --: "
                                          "llmkit tokenizer encode TOKENIZER -- ..."),
    (["tokenize", "corpus", "-t", "tok", "-o=runs/x"], "=runs/x starts with '='; write -o runs/x or --out=runs/x"),
    (["tokenize", "corpus", "-t", "tok", "-o==x"], "==x starts with '='; give a path after -o (a name that starts with '=' with its folder before it: $PWD/=NAME)"),
    # an input set in a --config file: refused before the file is read, so said here
    (["tokenize", "corpus", "-o", "x", "--config", "c.toml"],
     "Missing option '--tokenizer' / '-t'; inputs and -o are typed on the command line, a --config file holds options only"),
])
def test_usage_errors_are_one_line_naming_the_help(cli, args, says):
    """A missing or unknown option is bad input like any other: one line, exit 2 (click's code
    for usage), not Typer's box."""
    result = cli(*args)
    lines = [line for line in result.output.splitlines() if line.strip()]
    assert result.exit_code == 2 and len(lines) == 1 and lines[0].startswith("error: "), result.output
    assert says in lines[0] and "unexpected" not in lines[0]


def test_explicit_params_ignores_defaults():
    from typer.testing import CliRunner

    seen = {}
    app = typer.Typer()

    @app.command()
    def run(ctx: typer.Context, lr: float = 1.0, steps: int = 5) -> None:
        seen.update(config.explicit_params(ctx))

    assert CliRunner().invoke(app, ["--steps", "7"]).exit_code == 0
    assert seen == {"steps": 7}


def test_report_prints_one_row_per_artifact(cli, tmp_path):
    corpus = _corpus(tmp_path / "corpus")
    with artifacts.create(tmp_path / "eval", "eval") as build:  # (error bars and each class's figures are no headline)
        (build.dir / "metrics.json").write_text(json.dumps({"bleu": 31.25, "bleu_ci95": 2.5, "copa/acc": 0.5, "copa/acc_stderr": 0.05,
                                                            "f1": 0.75, "f1_neg": 0.5, "support_neg": 3}))
    result = cli("report", corpus, tmp_path / "eval")
    assert result.exit_code == 0, result.output
    assert artifacts.load(corpus).short_fingerprint in result.output
    rows = json.loads(cli("report", "--json", corpus, tmp_path / "eval").stdout)  # (for scripts: the same rows, whole)
    assert [(r["path"], r["kind"], r["fingerprint"]) for r in rows] == [
        (str(corpus), "corpus", artifacts.load(corpus).fingerprint), (str(tmp_path / "eval"), "eval", artifacts.load(tmp_path / "eval").fingerprint)]
    assert rows[0]["stats"] == artifacts.load(corpus).stats and "bleu 31.25" in rows[1]["headline"] and rows[1]["readable"]
    said = " ".join(result.output.split())
    assert "bleu 31.25" in said and "copa/acc 0.5" in said and "f1 0.75" in said and "1 doc," in said, said
    assert not any(name in said for name in ("ci95", "stderr", "f1_neg", "support")), said
    # inspect shows the same headline (its stats rows had no score of an eval)
    assert "headline bleu 31.25" in " ".join(cli("inspect", tmp_path / "eval").output.replace("│", " ").split())
    # metrics.json edited in place, its size kept: not shown as measured, and the report fails as for a damaged one
    metrics = tmp_path / "eval" / "metrics.json"
    text = metrics.read_text()
    metrics.write_text(text.replace("31.25", "41.25"))
    result = cli("report", corpus, tmp_path / "eval")
    said = " ".join(result.output.split())
    assert result.exit_code == 1 and "metrics.json damaged or changed since" in said and "41.25" not in said, said
    assert result.exit_code == cli("report", tmp_path / "eval").exit_code
    metrics.write_text(text)
    assert cli("report", tmp_path / "missing").exit_code == 1
    # A recipe's output folder (or a glob over it) holds other things too: folders are expanded,
    # what is not an artifact is skipped with a note; nothing at all to report is an error.
    (tmp_path / "notes").mkdir()
    for args in ([tmp_path], [corpus, tmp_path / "eval", tmp_path / "notes"]):
        result = cli("report", *args)
        assert result.exit_code == 0, result.output
        assert "bleu 31.25" in result.output and "1 doc," in result.output
    assert "skipped" in result.output and "notes" in result.output
    assert "no readable artifact among" in cli("report", tmp_path / "notes").output
    # one damaged artifact in a folder is named, the others still shown (the report stopped at it)
    (corpus / "manifest.json").write_text("{")
    result = cli("report", tmp_path)
    assert result.exit_code == 1 and "bleu 31.25" in result.output, result.output
    assert f"1 artifact(s) could not be read: {corpus}" in result.output.strip().splitlines()[-1]
    rows = json.loads(cli("report", "--json", tmp_path).stdout)  # (the damaged one a row too, not only a note)
    assert {(r["path"], r["readable"]) for r in rows} == {(str(tmp_path / "eval"), True), (str(corpus), False)}, rows
    # the same given by path among others (a recipe's last line, report "$OUT"/{corpus,...}): named, the rest shown
    # (it stopped at the damaged one with no table); given alone, the one line
    result = cli("report", corpus, tmp_path / "eval", tmp_path / "missing")
    assert result.exit_code == 1 and "bleu 31.25" in result.output, result.output
    assert (f"2 artifact(s) could not be read: {corpus}, {tmp_path / 'missing'}"
            in " ".join(result.output.split()[-30:])), result.output
    result = cli("report", corpus)
    assert result.exit_code == 1 and len(result.output.strip().splitlines()) == 1, result.output
    # a stray file among them (a glob's log or note) is skipped, as a stray folder is, not called damaged
    (tmp_path / "notes.txt").write_text("a note\n")
    result = cli("report", tmp_path / "eval", tmp_path / "notes.txt")
    assert result.exit_code == 0 and "bleu 31.25" in result.output and "skipped" in result.output, result.output
    # damage that only the row's headline finds (metrics.json edited to a list of its size): that row says so, the
    # rest is shown
    (tmp_path / "eval" / "metrics.json").write_text("[1, 2, 3, 4, 5]")
    other = _corpus(tmp_path / "other")
    result = cli("report", other, tmp_path / "eval")
    assert result.exit_code == 1 and "1 doc," in result.output and "cannot be read" in result.output, result.output
    assert f"1 artifact(s) could not be read: {tmp_path / 'eval'}" in result.output.strip().splitlines()[-1]


def test_report_notes_a_run_inside_that_stopped_before_its_manifest(cli, tmp_path):
    """A recipe's folder with one training run killed part way: the report says so, with what to rerun
    (it showed the finished artifacts alone, as if that stage had never run)."""
    from llmkit.outputs import RUN_MARK

    _corpus(tmp_path / "recipe" / "corpus")
    run = tmp_path / "recipe" / "run"
    (run / "checkpoints").mkdir(parents=True)
    (run / RUN_MARK).write_text("")
    result = cli("report", tmp_path / "recipe")
    assert result.exit_code == 0 and "1 doc," in result.output, result.output
    flat = " ".join(result.output.split())
    assert "is a training run that has not finished" in flat and "--resume" in flat, result.output


def test_report_says_a_run_or_sweep_given_that_has_not_finished(cli, tmp_path):
    """A run given by name that stopped before its manifest is the one line verify gives (it said the
    folder held no artifact, in two lines); an unfinished sweep shows its finished runs and says it is
    unfinished, with a run stopped inside it (it showed them as if the sweep were whole)."""
    from llmkit.outputs import RUN_MARK

    run = tmp_path / "run"
    (run / "checkpoints").mkdir(parents=True)
    (run / RUN_MARK).write_text("")
    result = cli("report", run)
    lines = [line for line in result.output.strip().splitlines() if line.strip()]
    assert result.exit_code == 1 and len(lines) == 1, result.output
    assert "is a training run that has not finished" in lines[0] and "--resume" in lines[0], result.output
    _corpus(tmp_path / "corpus")  # one among several paths (report runs/* while a run trains): said, the others shown
    result = cli("report", tmp_path / "corpus", run)
    flat = " ".join(result.output.split())
    assert result.exit_code == 0 and "1 doc," in flat and "is a training run that has not finished" in flat, result.output
    sweep = tmp_path / "sweep"
    (sweep / "configs").mkdir(parents=True)
    (sweep / RUN_MARK).write_text("")
    _corpus(sweep / "runs" / "done")
    shutil.copytree(run, sweep / "runs" / "stopped")
    result = cli("report", sweep)
    flat = " ".join(result.output.split())
    assert result.exit_code == 0 and "1 doc," in flat, result.output
    assert "is a sweep that has not finished" in flat and "stopped is a training run that has not finished" in flat, result.output
    shutil.rmtree(sweep / "runs" / "done")  # no run finished yet: the sweep's own one line
    result = cli("report", sweep)
    lines = [line for line in result.output.strip().splitlines() if line.strip()]
    assert result.exit_code == 1 and len(lines) == 1 and "is a sweep that has not finished" in lines[0], result.output


def test_report_notes_an_input_replaced_since(cli, tmp_path):
    """A recipe rerun that stopped part way leaves later stages' artifacts of the earlier run beside
    the new ones: their rows say so (not damage: exit 0)."""
    corpus = _corpus(tmp_path / "corpus")
    with artifacts.create(tmp_path / "eval", "eval", inputs=[corpus]) as build:
        (build.dir / "metrics.json").write_text(json.dumps({"bleu": 31.25}))
        build.add_input("corpus", artifacts.load(corpus))
    assert "note:" not in cli("report", tmp_path).output
    with artifacts.create(corpus, "corpus", force=True) as build:  # rebuilt with another seed
        (build.dir / "a.txt").write_text("text")
        build.seed = 4
    result = cli("report", tmp_path)
    assert result.exit_code == 0 and f"note: eval: its input corpus at {corpus} was replaced since" in " ".join(result.output.split())


def test_help_shows_brackets_as_typed():
    """Option help is rich markup in --help: `llmkit[ray]` must not lose its brackets (the install
    hint said pip install 'llmkit', which installs no Ray)."""
    from typer.testing import CliRunner

    from llmkit.cli import app

    shown = " ".join(CliRunner().invoke(app, ["clean", "--help"], terminal_width=200).output.split())
    assert "pip install 'llmkit[ray]'" in shown


def test_advice_added_on_the_way_ends_the_one_line_and_replaces_an_interruptions(monkeypatch):
    """What a stage adds to an exception (add_advice) is said on the error's own line, whitespace and
    all made one line; Python's own exception notes, which libraries add too, are not."""
    from typer.testing import CliRunner

    from llmkit import cli
    from llmkit.errors import add_advice, one_line

    failed = UserError("the work failed")
    add_advice(failed, "your old output\nis back")
    failed.add_note("a library's own note")
    assert one_line(failed) == "the work failed; your old output is back"

    def interrupted(*_, **__):
        stop = KeyboardInterrupt()
        add_advice(stop, "the 2 records made are in\nout.partial")
        raise stop

    monkeypatch.setattr("llmkit.inspect_view.print_report", interrupted)
    monkeypatch.setattr("llmkit.inspect_view.artifacts_in", lambda paths: ([], []))
    result = CliRunner().invoke(cli.app, ["report", "anything"])
    assert result.exit_code == 130 and "error: interrupted; the 2 records made are in out.partial" in result.output, result.output


def test_a_data_stage_stopped_before_its_first_finished_part_says_nothing_was_kept(tmp_path):
    """It said "continue where it stopped", with nothing kept to continue from (no resume marker yet)."""
    from llmkit.errors import advice_of
    from llmkit.outputs import RESUME_MARKER, atomic_directory

    for marked, says in ((False, "nothing was kept to continue from; rerun the command"),
                         (True, "rerun the command to continue where it stopped")):
        with pytest.raises(KeyboardInterrupt) as stopped:
            with atomic_directory(tmp_path / f"out-{marked}", resume_key="0" * 64) as tmp:
                if marked:
                    (tmp / RESUME_MARKER).write_text("{}")
                raise KeyboardInterrupt
        assert advice_of(stopped.value) == says
        assert any(p.name.startswith(f".out-{marked}.partial-") for p in tmp_path.iterdir()) == marked
    # a rerun with other inputs or options removes the kept work, and says so (it was silent)
    from llmkit import console

    said = []
    original, console.note = console.note, said.append
    try:
        with atomic_directory(tmp_path / "out-True", resume_key="1" * 64):
            pass
    finally:
        console.note = original
    assert len(said) == 1 and "was for other inputs or options: removed, and this run starts over" in said[0], said
    assert not any(p.name.startswith(".out-True.partial-") for p in tmp_path.iterdir())
    # the same run's folder without a marker (SIGKILLed before its first): starting over is said too
    partial = tmp_path / f".out-killed.partial-{'2' * 16}"
    (partial / "shards").mkdir(parents=True)
    said.clear()
    console.note = said.append
    try:
        with atomic_directory(tmp_path / "out-killed", resume_key="2" * 64) as tmp:
            assert tmp == partial
    finally:
        console.note = original
    assert len(said) == 1 and "holds no finished part to continue from: this run starts over" in said[0], said


@pytest.mark.parametrize("command, says", [
    (["tokenize", "corpus", "-t", "tok", "-o", "out"], "nothing was written; rerun the command"),  # (before its output)
    (["pretrain", "tokens", "-o", "run"], "rerun it with --resume to continue from its last checkpoint"),
    # (a --force run's checkpoints, once saved, are the run's: it said only "start it again")
    (["finetune", "ckpt", "--data", "d.jsonl", "-o", "run", "--force"], "rerun it with --resume in place of --force to continue"),
    # (a --force sweep stopped past a run's checkpoint has its new runs kept: it said "start it again")
    (["sweep", "tokens", "--flops", "1e12", "-o", "sweep", "--force"], "rerun it without --force to go on from the runs the new sweep kept"),
    (["sweep", "tokens", "--flops", "1e12", "-o", "sweep"], "rerun the same command to continue: the finished runs are kept"),
    (["eval", "ckpt", "--metric", "perplexity", "--data", "tokens", "-o", "out"], "nothing was written; rerun the command"),
])
def test_a_stopped_command_says_what_rerunning_it_does(monkeypatch, command, says):
    """Without a stage's own advice, the interruption line says what a rerun of this command does
    (it said clean, tokenize and --resume for every command, a sweep and an eval included)."""
    from typer.testing import CliRunner

    from llmkit import cli

    def stopped(*_, **__):
        raise KeyboardInterrupt()

    monkeypatch.setattr("llmkit.artifacts.load", stopped)
    result = CliRunner().invoke(cli.build_app(cli.named_command(command)), command)
    assert result.exit_code == 130 and f"error: interrupted; {says}" in " ".join(result.output.split()), result.output


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="PR_SET_PDEATHSIG is Linux's")
def test_a_child_started_to_end_with_its_parent_is_stopped_when_the_parent_is_killed(tmp_path):
    """A sweep's runs: SIGKILL of the sweep left them training with nobody to wait for them."""
    import signal
    import time

    marker = tmp_path / "terminated"
    child = ("import signal, sys, time\n"
             "from llmkit.runtime import end_with_parent\n"
             f"signal.signal(signal.SIGTERM, lambda *a: (open({str(marker)!r}, 'w').close(), sys.exit(143)))\n"
             "end_with_parent()\nprint('ready', flush=True)\ntime.sleep(60)\n")
    parent = ("import os, subprocess, sys, time\n"
              "from llmkit.runtime import END_WITH_PARENT\n"
              f"subprocess.Popen([sys.executable, '-c', {child!r}], env=dict(os.environ, **{{END_WITH_PARENT: str(os.getpid())}}))\n"
              "time.sleep(60)\n")
    started = subprocess.Popen([sys.executable, "-c", parent], stdout=subprocess.PIPE, text=True)
    assert started.stdout.readline().strip() == "ready"  # (the child's line: the parent prints none)
    started.send_signal(signal.SIGKILL)
    started.wait()
    deadline = time.monotonic() + 10
    while not marker.exists() and time.monotonic() < deadline:
        time.sleep(0.05)
    assert marker.exists()


def test_sigterm_that_a_library_turns_into_keyboardinterrupt_still_exits_as_terminated(cli, tmp_path, monkeypatch):
    """Ray's ray.get catches the SIGTERM handler's exception and raises a plain KeyboardInterrupt:
    the run said "interrupted" and exited 130, which a scheduler reads as Ctrl-C, not preemption."""
    import signal

    from llmkit import cli as cli_module, inspect_view
    from llmkit.errors import Terminated

    def swallowed(*args, **kwargs):
        try:
            signal.raise_signal(signal.SIGTERM)
        except Terminated:
            raise KeyboardInterrupt from None  # (as Ray's signal check does)

    monkeypatch.setattr(inspect_view, "print_artifact", swallowed)
    result = cli("inspect", _corpus(tmp_path / "corpus"))
    assert result.exit_code == 143 and "error: terminated" in result.output, result.output
    # the next command of this process, stopped by Ctrl-C, is interrupted, not terminated (the flag is one command's)
    def ctrl_c(*args, **kwargs):
        raise KeyboardInterrupt

    monkeypatch.setattr(inspect_view, "print_artifact", ctrl_c)
    again = cli("inspect", tmp_path / "corpus")
    assert again.exit_code == 130 and "error: interrupted" in again.output and not cli_module._signals_received


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="an ASCII locale is a Linux (glibc) setting")
def test_an_ascii_locale_runs_in_utf8_mode(shared_data, tmp_path):
    """Under an ASCII locale (LC_ALL=C without Python's own switch to UTF-8) Python decoded file
    names as ASCII: the guard for paths that are not UTF-8 blamed a Chinese one, and printing
    Chinese failed. The command starts again in Python's UTF-8 mode (a legacy locale's is kept)."""
    import os

    env = dict(os.environ, LC_ALL="C", LANG="C", PYTHONUTF8="0", PYTHONCOERCECLOCALE="0")
    probe = subprocess.run([sys.executable, "-c", "import sys; print(sys.getfilesystemencoding())"], env=env,
                           capture_output=True, text=True, check=True).stdout.strip()
    assert probe.replace("-", "").lower() != "utf8"  # (the locale this test is about: else it shows nothing)
    lines = (shared_data / "chinese.txt").read_text(encoding="utf-8").splitlines(keepends=True)[:40]
    (tmp_path / "红楼梦.txt").write_text("".join(lines), encoding="utf-8")
    run = [sys.executable, "-m", "llmkit", "clean", "红楼梦.txt", "-o", "语料"]
    proc = subprocess.run(run, cwd=tmp_path, env=env, capture_output=True, timeout=300)
    assert proc.returncode == 0, proc.stderr.decode("utf-8", "replace")
    shown = subprocess.run([sys.executable, "-m", "llmkit", "inspect", "语料"], cwd=tmp_path, env=env, capture_output=True, timeout=120)
    assert shown.returncode == 0 and "语料" in shown.stdout.decode("utf-8"), shown.stderr.decode("utf-8", "replace")
    assert artifacts.load(tmp_path / "语料").manifest.command[:3] == ["llmkit", "clean", "红楼梦.txt"]
    # an output stream set to another encoding is named as such (inspect said the artifact looked damaged)
    latin = subprocess.run([sys.executable, "-m", "llmkit", "inspect", "语料"], cwd=tmp_path, capture_output=True, timeout=120,
                           env=dict(os.environ, PYTHONIOENCODING="latin-1"))
    said = latin.stderr.decode("utf-8", "replace").strip()
    assert latin.returncode == 1 and len(said.splitlines()) == 1, said
    assert "cannot be written in the output's encoding, latin-1" in said and "PYTHONIOENCODING=utf-8" in said


def test_verify_passes_a_checkpoint_whose_resume_state_was_removed_and_says_so(cli, tmp_path):
    """The resume state (twice the weights' size) is routinely deleted before a model is shipped; the
    loader allows it (only --resume reads it). verify failed such a checkpoint for good, advising a
    rebuild: it passes, with a note; a changed state file still fails."""
    with artifacts.create(tmp_path / "ckpt", "checkpoint") as build:
        (build.dir / "model.safetensors").write_bytes(b"weights")
        for name in ("training_state.json", "training_state.safetensors"):
            (build.dir / name).write_text("{}")
            build.state_names.add(name)
    for name in ("training_state.json", "training_state.safetensors"):
        (tmp_path / "ckpt" / name).unlink()
    result = cli("verify", tmp_path / "ckpt")
    said = " ".join(result.output.split())
    assert result.exit_code == 0 and said.count("resume state removed") == 2 and "--resume cannot continue" in said, said
    assert "1 file matches" in said
    (tmp_path / "ckpt" / "training_state.json").write_text("[]")
    result = cli("verify", tmp_path / "ckpt")
    assert result.exit_code == 1 and "changed file: training_state.json" in result.output, result.output


def test_the_lineage_tree_shows_an_artifacts_inputs_once():
    """Every run of a sweep reads one tokens artifact: its lineage was printed once per run (a 16-run
    sweep, over a hundred lines of the same tree)."""
    from rich.console import Console

    from llmkit.artifacts import LineageNode
    from llmkit.inspect_view import _tree

    corpus = LineageNode("corpus", "c", "corpus", "c" * 64, True, [])
    tokens = LineageNode("tokens", "t", "tokens", "t" * 64, True, [corpus])
    runs = [LineageNode(f"run:{i}", f"r{i}", "checkpoint", str(i) * 64, True, [tokens]) for i in range(3)]
    console = Console(width=200, record=True)
    console.print(_tree(LineageNode("output", "s", "sweep", "s" * 64, True, [*runs, tokens])))
    shown = console.export_text()
    assert shown.count("corpus: corpus c") == 1 and shown.count("(inputs above)") == 3, shown
