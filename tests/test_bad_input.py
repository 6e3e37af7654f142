"""Bad input, table-driven over every command: a non-zero exit, one line naming the problem (never
"unexpected"), nothing at the output path, and the inputs unchanged."""

from __future__ import annotations

import hashlib
import json
import os
import re
import shutil
from pathlib import Path

import pytest

from llmkit import artifacts, outputs

TINY_MODEL = ["--model", "tiny", "--n-layer", "1", "--n-embd", "32", "--n-head", "2", "--context-length", "64"]
TINY_RUN = ["--max-steps", "2", "--batch-tokens", "256", "--micro-batch", "4", "--eval-every", "0", "--save-every", "0"]


def _ok(result):
    assert result.exit_code == 0, result.output
    return result


@pytest.fixture(scope="module")
def chain(tmp_path_factory, shared_data):
    """text -> corpus -> tokenizer -> tokens -> checkpoint -> sft, an HF export, data files: small, built once."""
    from typer.testing import CliRunner

    from llmkit.cli import app

    def cli(*args):
        return CliRunner().invoke(app, [str(a) for a in args])

    root = tmp_path_factory.mktemp("chain")
    text = (shared_data / "tinyshakespeare.txt").read_text(encoding="utf-8")[:60_000]
    (root / "book.txt").write_text(text, encoding="utf-8")
    _ok(cli("clean", root / "book.txt", "--doc-per", "blank-line", "-o", root / "corpus"))
    _ok(cli("tokenizer", "train", root / "corpus", "-o", root / "tok", "--vocab-size", "300"))
    _ok(cli("tokenize", root / "corpus", "-t", root / "tok", "-o", root / "tokens"))
    _ok(cli("pretrain", root / "tokens", "-o", root / "ckpt", *TINY_MODEL, *TINY_RUN))
    rows = [{"prompt": f"Say {w} ({i}).", "response": w} for i, w in enumerate(("yes", "no", "maybe", "never") * 4)]
    (root / "sft.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows), encoding="utf-8")
    (root / "prompts.txt").write_text("First Citizen:\nROMEO:\n", encoding="utf-8")
    _ok(cli("export", root / "ckpt", "-o", root / "hf"))
    return root


def _digest(path: Path) -> dict[str, str]:
    """Every file under `path` (or `path` itself) by content: to prove an input was not touched."""
    path = Path(path)
    files = [path] if path.is_file() else sorted(p for p in path.rglob("*") if p.is_file())
    return {str(p): hashlib.sha256(p.read_bytes()).hexdigest() for p in files}


def _one_line_error(result, *, after_progress: bool = False) -> str:
    """The failure's one line. Before any work it is the only output; a failure during training
    comes after the run's progress lines (`after_progress`), and still as one line."""
    lines = [line for line in result.output.splitlines() if line.strip()]
    assert result.exit_code != 0, result.output
    if after_progress:
        assert sum(line.startswith("error: ") for line in lines) == 1, result.output
        lines = lines[-1:]
    assert len(lines) == 1 and lines[0].startswith("error: "), result.output
    assert "unexpected" not in lines[0] and "Traceback" not in result.output, result.output
    return lines[0]


# (command line with {name} for paths in the chain, the inputs it must leave alone, words the error says)
OVERLAPS = [
    (["pretrain", "{tokens}", "-o", "{tokens}"], ["tokens"], "is the stage's input"),
    (["pretrain", "{tokens}", "-o", "{tokens}", "--force"], ["tokens"], "is the stage's input"),
    (["pretrain", "{tokens}", "-o", "{tokens}", "--resume"], ["tokens"], "is the stage's input"),
    (["pretrain", "{tokens}", "-o", "{root}", "--force"], ["tokens"], "contains the stage's input"),
    (["pretrain", "{tokens}", "-o", "{tokens}/run", "--force"], ["tokens"], "lies inside the stage's input"),
    (["finetune", "{ckpt}", "--data", "{sft}", "-o", "{ckpt}", "--force"], ["ckpt"], "is the stage's input"),
    (["finetune", "{ckpt}", "--data", "{sft}", "-o", "{sft}", "--force"], ["sft"], "is the stage's input"),
    (["eval", "{ckpt}", "--data", "{tokens}", "-o", "{ckpt}", "--force"], ["ckpt"], "is the stage's input"),
    (["eval", "{ckpt}", "--data", "{tokens}", "-o", "{tokens}", "--force"], ["tokens"], "is the stage's input"),
    (["export", "{ckpt}", "-o", "{ckpt}", "--force"], ["ckpt"], "is the stage's input"),
    (["import", "{hf}", "-o", "{hf}", "--force"], ["hf"], "is the stage's input"),
    (["tokenize", "{corpus}", "-t", "{tok}", "-o", "{corpus}", "--force"], ["corpus"], "is the stage's input"),
    (["tokenize", "{corpus}", "-t", "{tok}", "-o", "{tok}", "--force"], ["tok"], "is the stage's input"),
    (["tokenizer", "train", "{corpus}", "-o", "{corpus}", "--force"], ["corpus"], "is the stage's input"),
    (["clean", "{book}", "-o", "{book}", "--force"], ["book"], "is the stage's input"),
    (["clean", "{corpus}", "-o", "{corpus}"], ["corpus"], "is the stage's input"),  # a folder of readable files
    (["generate", "{ckpt}", "--prompts", "{prompts}", "-o", "{prompts}", "--force"], ["prompts"], "would overwrite the stage's input"),
    (["generate", "{ckpt}", "-p", "x", "-o", "{ckpt}/model.safetensors", "--force"], ["ckpt"], "lies inside the stage's input"),
]


@pytest.mark.parametrize("args,untouched,message", OVERLAPS, ids=[" ".join(c[0][:1] + c[0][-2:]) for c in OVERLAPS])
def test_an_output_that_is_in_or_holds_an_input_is_refused(cli, chain, args, untouched, message):
    paths = {p.stem: p for p in chain.iterdir()} | {"root": chain}
    before = {name: _digest(paths[name]) for name in untouched}
    line = _one_line_error(cli(*[a.format(**paths) for a in args]))
    assert message in line
    assert {name: _digest(paths[name]) for name in untouched} == before


def test_output_folders_are_created_and_impossible_outputs_named(cli, chain, tmp_path, monkeypatch):
    out = tmp_path / "new" / "deeper" / "corpus"
    _ok(cli("clean", chain / "book.txt", "-o", out))
    assert artifacts.load(out).kind == "corpus"
    (tmp_path / "afile").write_text("x")
    assert "is a file, not a folder" in _one_line_error(cli("clean", chain / "book.txt", "-o", tmp_path / "afile" / "corpus"))
    monkeypatch.chdir(tmp_path)
    assert "the folder you are in" in _one_line_error(cli("clean", chain / "book.txt", "-o", ".", "--force"))
    assert (tmp_path / "afile").read_text() == "x"
    if Path("/proc/self").is_dir():  # a folder nobody can write in, named as the output's (not its hidden lock file)
        line = _one_line_error(cli("generate", chain / "ckpt", "-p", "hi", "-n", "2", "-o", "/proc/x.jsonl"))
        assert "cannot create files in /proc" in line and "where /proc/x.jsonl would go" in line, line


def test_a_read_only_folder_is_named(chain, tmp_path):
    """(Run as a user is: as root, with its permission overrides dropped; it was skipped as root.)"""
    locked = tmp_path / "locked"
    locked.mkdir()
    locked.chmod(0o555)
    try:
        line = _one_line_error_of(_as_a_user(["clean", chain / "book.txt", "-o", locked / "corpus"], tmp_path))
    finally:
        locked.chmod(0o755)
    assert "read-only" in line, line
    assert list(locked.iterdir()) == []


@pytest.mark.parametrize("stage,extra,message", [
    ("pretrain", ["--seq-len", "1000"], "longer than the model's context length"),
    ("finetune", ["--template", "nosuch"], "unknown template"),
    # fails at step 2, after its first metrics line: metrics alone are not worth the run they would replace
    ("pretrain", ["--max-steps", "4", "--lr", "1e9", "--grad-clip", "0"], "no checkpoint was written yet"),
])
def test_a_training_stage_that_fails_leaves_nothing_and_restores_what_it_replaced(cli, chain, tmp_path, stage, extra, message):
    inputs = ["{tokens}"] if stage == "pretrain" else ["{ckpt}", "--data", "{sft}"]
    paths = {p.stem: p for p in chain.iterdir()}
    base = [stage, *[a.format(**paths) for a in inputs], "-o", tmp_path / "run"]
    settings = [*TINY_MODEL, *TINY_RUN] if stage == "pretrain" else ["--max-steps", "1", "--batch-size", "4", "--micro-batch", "4"]
    assert message in _one_line_error(cli(*base, *settings, *extra), after_progress=True)
    assert not (tmp_path / "run").exists() and not list(tmp_path.glob(".run*"))
    _ok(cli(*base, *settings))  # the corrected run needs no --force
    made = artifacts.load(tmp_path / "run").fingerprint
    forced = cli(*base, *settings, *extra, "--force")
    line = _one_line_error(forced, after_progress=True)
    assert message in line
    if "no checkpoint" in message:  # it failed while training, after the old run was moved aside: that run is back
        assert f"the run --force replaced is back in {tmp_path / 'run'}; rerun with --force to start over" in line
    assert artifacts.load(tmp_path / "run").fingerprint == made and artifacts.verify(tmp_path / "run").ok
    assert not list(tmp_path.glob(".run*"))


def test_a_config_file_inside_the_output_is_not_deleted_by_force(cli, chain, tmp_path):
    out = tmp_path / "corpus"
    _ok(cli("clean", chain / "book.txt", "-o", out))
    settings = out / "my.toml"
    settings.write_text("[clean]\nmin_words = 1\n")
    assert "lies inside -o" in _one_line_error(cli("clean", chain / "book.txt", "-o", out, "--config", settings, "--force"))
    assert settings.read_text() == "[clean]\nmin_words = 1\n"


def test_a_second_writer_of_one_output_is_refused_and_stale_temporaries_go(cli, chain, tmp_path):
    out = tmp_path / "corpus"
    stale = tmp_path / ".corpus.tmp-killed"
    stale.mkdir()
    (stale / "part.parquet").write_text("half written by a killed run")
    with outputs.output_lock(out):
        line = _one_line_error(cli("clean", chain / "book.txt", "-o", out))
        assert "another llmkit run is writing" in line
        line = _one_line_error(cli("pretrain", chain / "tokens", "-o", out, *TINY_MODEL, *TINY_RUN))
        assert "another llmkit run is writing" in line
    assert not out.exists()
    _ok(cli("clean", chain / "book.txt", "-o", out))
    assert not stale.exists() and not (tmp_path / ".corpus.lock").exists()
    shutil.rmtree(out)


# Out-of-range, non-finite and mistyped values: refused by the option declarations before any work.
BAD_VALUES = [
    (["clean", "{book}", "--workers", "-1"], "--workers must be in [0, 1024]"),
    (["clean", "{book}", "--min-words", "-1"], "--min-words must be at least 0"),
    (["clean", "{book}", "--min-language-score", "nan"], "--min-language-score must be a finite number"),
    (["clean", "{book}", "--gopher-quality", "--min-words", "500", "--max-words", "100"], "--min-words (500) is above --max-words (100)"),
    (["clean", "{book}", "--languages", "en,zn"], "--languages zn: not a language code py3langid knows"),
    (["clean", "--dataset", "./missing.jsonl"], "--dataset ./missing.jsonl: no such file or folder"),
    (["clean", "{book}", "--seed", "-1"], "--seed must be in [0, 4294967295]"),
    (["tokenizer", "train", "{corpus}", "--min-frequency", "0"], "--min-frequency must be in [1, 4294967295]"),
    (["tokenize", "{corpus}", "-t", "{tok}", "--val-fraction", "1"], "--val-fraction must be in [0, 1)"),
    (["tokenize", "{corpus}", "-t", "{tok}", "--batch-size", "0"], "--batch-size must be in [1, 1048576]"),
    (["pretrain", "{tokens}", "--seq-len", "0"], "--seq-len must be at least 1"),
    (["pretrain", "{tokens}", "--warmup-steps", "-5"], "--warmup-steps must be at least 0"),
    (["pretrain", "{tokens}", "--weight-decay", "-0.1"], "--weight-decay must be at least 0"),
    (["pretrain", "{tokens}", "--eval-every", "-1"], "--eval-every must be at least 0"),
    (["pretrain", "{tokens}", "--min-lr-ratio", "2"], "--min-lr-ratio must be in [0, 1]"),
    # settings the run's optimizer, schedule or model never read: the same weights under another fingerprint
    (["pretrain", "{tokens}", "--momentum", "0.5"], "--momentum would change nothing here (--momentum is for SGD (--optimizer sgd))"),
    (["pretrain", "{tokens}", "--optimizer", "sgd", "--beta1", "0.8", "--beta2", "0.9"], "--beta1, --beta2 would change nothing"),
    (["pretrain", "{tokens}", "--schedule", "constant", "--min-lr-ratio", "0.5"], "--min-lr-ratio would change nothing here"),
    (["pretrain", "{tokens}", "--pos", "learned", "--rope-theta", "500"], "--rope-theta would change nothing here (--rope-theta is "
                                                                           "for rotary positions (--pos rope))"),
    (["pretrain", "{tokens}", "--model", "gpt2-tiny", "--rope-theta", "500"], "--rope-theta is the base of rotary positions"),
    (["sweep", "{tokens}", "--model", "gpt2-tiny", "--rope-theta", "500", "--sizes", "1x32,2x32", "--head-dim", "16",
      "--tokens", "2e4", "--seq-len", "32"], "--rope-theta is the base of rotary positions"),  # (before any run starts)
    (["sweep", "{tokens}", "--sizes", "1x16,1x32,1x48", "--head-dim", "16", "--per-budget", "3", "--flops", "1e30"],
     "the FLOP budget 1e+30 leaves the 1x16 model"),
    (["pretrain", "{tokens}", "--schedule", "constant", "--min-lr-ratio", "0.5", "--momentum", "0.5"],
     "(--min-lr-ratio is for the decay of --schedule cosine or linear; --momentum is for SGD (--optimizer sgd))"),
    (["finetune", "{ckpt}", "--data", "{sft}", "--momentum", "0.5"], "--momentum would change nothing here"),
    (["pretrain", "{tokens}", "--mlm-probability", "2"], "--mlm-probability must be in (0, 1)"),
    (["pretrain", "{tokens}", "--gpus", "-1"], "--gpus must be at least 0"),
    (["pretrain", "{tokens}", "--grad-clip", "nan"], "--grad-clip must be a finite number"),
    (["pretrain", "{tokens}", "--lr", "nan"], "--lr must be a finite number"),
    (["pretrain", "{tokens}", "--lr", "0"], "--lr must be positive"),
    (["pretrain", "{tokens}", "--log-every", "0"], "--log-every must be at least 1"),
    (["pretrain", "{tokens}", "--dropout", "2"], "--dropout must be in [0, 1)"),
    (["pretrain", "{tokens}", "--model", "tiny", "--mlp-ratio", "0.01"], "mlp_ratio 0.01 gives the MLP no hidden units"),
    (["pretrain", "{tokens}", "--node-rank", "1"], "--node-rank must be below --nnodes (1)"),
    (["pretrain", "{tokens}", "--nnodes", "2"], "multi-node training needs --master-addr, the address of node 0"),
    (["pretrain", "{tokens}", "--master-addr", "10.0.0.1", "--join-timeout", "5"],
     "--master-addr, --join-timeout would change nothing here (--master-addr, --join-timeout are for multi-node training"),
    (["pretrain", "{tokens}", "--threads", "100000"], "--threads 100000 is far more than this machine's"),
    (["finetune", "{ckpt}", "--data", "{sft}", "--epochs", "0"], "--epochs must be positive"),
    (["finetune", "{ckpt}", "--data", "{sft}", "--lora-rank", "-2"], "--lora-rank must be at least 0"),
    (["eval", "{ckpt}", "--data", "{tokens}", "--batch-size", "0"], "--batch-size must be at least 1"),
    (["generate", "{ckpt}", "-p", "x", "--temperature", "-1"], "--temperature must be at least 0"),
    (["generate", "{ckpt}", "-p", "x", "--top-k", "-1"], "--top-k must be at least 0"),
    (["chat", "{ckpt}", "--top-p", "0"], "--top-p must be in (0, 1]"),
    (["generate", "{ckpt}", "-p", "x", "-n", "10", "--min-new-tokens", "20"], "--min-new-tokens 20 is more than --max-new-tokens 10"),
    (["chat", "{ckpt}", "--min-new-tokens", "-1"], "--min-new-tokens must be at least 0"),
    (["clean", "{book}", "--threshold", "0.8", "--bands", "3"], "give --threshold or --bands/--rows, not both"),
    (["clean", "{book}", "--max-words", "5"], "--max-words would change nothing here (--max-words is for the Gopher quality "
                                              "rules, which --gopher-quality or --preset web turns on)"),
    (["clean", "{book}", "--preset", "web", "--no-c4", "--c4-min-sentences", "3"], "--c4-min-sentences would change nothing"),
    (["clean", "{book}", "--min-language-score", "0.5"], "is for the language filter, which --languages or --preset web"),
    (["clean", "{book}", "--no-fix-unicode", "--normalization", "NFKC"], "--normalization would change nothing here"),
    (["pretrain", "{tokens}", "--resume", "--force"], "--resume continues the run in -o and --force replaces it"),
    (["average", "{ckpt}", "{ckpt}", "--weights", "1,,2"], "--weights '1,,2': an empty entry between commas"),
    (["plan", "--hf-config", "{hf}/config.json", "--model", "tiny"], "--hf-config describes the model; leave out --model"),
    (["plan", "--hf-config", "{hf}/config.json", "--model", "gpt2"], "--hf-config describes the model; leave out --model"),
    (["plan", "--model", "tiny", "--gpus", "0"], "--gpus 0 plans no h100"),
    (["finetune", "{ckpt}", "--data", "{sft}", "--lora-alpha", "4"], "--lora-alpha sets up LoRA adapters, which only --lora-rank N adds"),
    (["finetune", "{ckpt}", "--data", "{sft}", "--lora-targets", "up_proj"], "--lora-targets sets up LoRA adapters"),
    (["finetune", "{ckpt}", "--data", "{sft}", "--lora-rank", "2", "--freeze", "mlp"], "--freeze picks what full fine-tuning trains"),
    (["finetune", "{ckpt}", "--data", "{sft}", "--task", "classify", "--template", "translate"], "a classifier reads each text as it is"),
    (["eval", "{ckpt}", "--task", "copa", "-m", "accuracy"], "--task scores each benchmark its own way"),
    (["generate", "{ckpt}", "-p", "x", "--device", "tpu"], "--device tpu: unknown device; use cpu, cuda, cuda:N, mps or auto"),
    (["eval", "{ckpt}", "--data", "{tokens}", "--device", "cuda:x"], "--device cuda:x: unknown device"),
]


@pytest.mark.parametrize("args,message", BAD_VALUES, ids=[" ".join(a[:1] + a[-2:]) for a, _ in BAD_VALUES])
def test_bad_option_values_are_one_line_errors_before_any_work(cli, chain, tmp_path, args, message):
    paths = {p.stem: p for p in chain.iterdir()}
    command = [a.format(**paths) for a in args]
    if command[0] not in ("generate", "chat", "plan"):
        command += ["-o", str(tmp_path / "out")]
    assert message in _one_line_error(cli(*command))
    assert list(tmp_path.iterdir()) == []


@pytest.mark.parametrize("args,text,message", [
    (["pretrain", "{tokens}"], "[pretrain]\nmomentum = 0.5\n", "leave it out (--momentum set in {file})"),
    (["pretrain", "{tokens}", "--min-lr-ratio", "0.5"], "[pretrain]\nschedule = \"constant\"\nmomentum = 0.5\n",
     "leave them out (--momentum set in {file})"),
    (["eval", "{ckpt}", "--data", "{tokens}"], "[eval]\ncompile = true\n", "leave it out (--compile set in {file})"),
    (["clean", "{book}"], "[clean]\nmin_words = 20\n", "leave it out (--min-words set in {file})"),
])
def test_an_idle_setting_from_a_config_file_is_said_to_come_from_it(cli, chain, tmp_path, args, text, message):
    """Checked as the stage runs, or as its options are built: either way the line names the file
    (it named only the flag, which the user had not typed), and only the settings the file gave."""
    paths = {p.stem: p for p in chain.iterdir()}
    (tmp_path / "run.toml").write_text(text)
    result = cli(*[a.format(**paths) for a in args], "--config", tmp_path / "run.toml", "-o", tmp_path / "out")
    assert result.exit_code == 2 and message.format(file=tmp_path / "run.toml") in _one_line_error(result)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["run.toml"]


def test_an_unparsable_value_and_an_out_of_range_one_exit_alike(cli, chain, tmp_path):
    """Both are usage errors (status 2, as Typer's own for `--lr abc`), whichever check refused the value."""
    for weights in ("abc", "-1,2"):
        result = cli("average", chain / "ckpt", chain / "ckpt", "--weights", weights, "-o", tmp_path / "out")
        assert result.exit_code == 2 and _one_line_error(result).startswith("error: --weights"), result.output
    assert cli("pretrain", chain / "tokens", "--lr", "abc", "-o", tmp_path / "out").exit_code == 2
    assert list(tmp_path.iterdir()) == []


def test_a_mistyped_data_path_under_a_folder_here_is_not_taken_for_a_hub_name(cli, chain, tmp_path, monkeypatch):
    """`runs/tokenz` has the form of a Hub name (`org/name`), but runs/ is a folder here: a typo, said at once."""
    (tmp_path / "runs").mkdir()
    monkeypatch.chdir(tmp_path)
    line = _one_line_error(cli("eval", chain / "ckpt", "--data", "runs/tokenz", "-o", tmp_path / "out"))
    assert line == "error: --data runs/tokenz: no such file or artifact; check the path"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["runs"]


@pytest.mark.skipif(__import__("torch").cuda.is_available(), reason="a machine with a CUDA GPU")
@pytest.mark.parametrize("stage", ["generate", "eval"])
def test_a_cuda_device_on_a_machine_without_one_is_named(cli, chain, tmp_path, stage):
    args = ["-p", "x"] if stage == "generate" else ["--data", chain / "tokens", "-o", tmp_path / "out"]
    line = _one_line_error(cli(stage, chain / "ckpt", *args, "--device", "cuda"))
    assert "--device cuda: this machine has no CUDA GPU" in line and "use --device cpu or auto" in line
    assert list(tmp_path.iterdir()) == []


@pytest.mark.parametrize("name,text,message", [
    ("steps.toml", "[pretrain]\nmax_steps = 2.5\n", "--max-steps must be a whole number, got 2.5"),
    ("steps.yaml", "pretrain:\n  max_steps: ten\n", "--max-steps must be a whole number, got 'ten'"),
    ("flag.toml", "[pretrain]\ncompile = \"yes\"\n", "--compile must be true or false"),
    ("table.toml", "[pretrain.optimizer]\nlr = 1\n", "unknown table [pretrain.optimizer]"),
    ("stage.toml", "[pretrian]\nlr = 1\n", "unknown table [pretrian]"),
    ("key.toml", "[pretrain]\nlearning_rate = 1\n", "unknown option(s) in"),
    ("syntax.toml", "lr = [\n", "is not valid: TOMLDecodeError"),
    ("twice.toml", "[pretrain]\nlr = 1\nlearning_rate = 2\n", "unknown option(s) in"),
    ("twice.yaml", "pretrain:\n  lr: 1\n  lr: 2\n", "'lr' is set twice"),
    ("both.toml", "max_steps = 5\n[pretrain]\nlr = 1\n", "sets max_steps at top level beside a [pretrain] table"),
    ("typed-over.toml", "[pretrain]\nmax_steps = \"two\"\n", "--max-steps must be a whole number, got 'two' (a typed --max-steps"),
])
def test_config_files_with_wrong_types_or_tables_are_refused(cli, chain, tmp_path, name, text, message):
    (tmp_path / name).write_text(text)
    typed = ["--max-steps", "1"] if name.startswith("typed-over") else []  # a bad value is refused even where a flag wins
    result = cli("pretrain", chain / "tokens", "-o", tmp_path / "out", "--config", tmp_path / name, *typed)
    assert message in _one_line_error(result)
    assert result.exit_code == 2  # a usage error, as the same value typed as a flag
    assert not (tmp_path / "out").exists()


def test_no_stage_writes_over_a_part_of_a_finished_artifact(cli, chain, tmp_path):
    """A file a finished artifact lists, or an artifact inside one (a sweep's runs/NAME), is that artifact's:
    `plot -o FIT/plots/isoflop.png --force` and `average ... -o SWEEP/runs/NAME --force` replaced them (a review)."""
    import shutil

    outer = tmp_path / "tokens"
    shutil.copytree(chain / "tokens", outer)
    shutil.copytree(chain / "ckpt", outer / "nested")
    listed = sorted(json.loads((outer / "manifest.json").read_text())["files"])[0]
    before = (outer / listed).read_bytes()
    line = _one_line_error(cli("generate", chain / "ckpt", "-p", "hi", "--max-new-tokens", "2", "-o", outer / listed, "--force"))
    assert "is part of the finished artifact" in line and (outer / listed).read_bytes() == before
    # an artifact written inside another and not recorded by it is replaced as anywhere (a review: a rerun was refused)
    assert cli("export", chain / "ckpt", "-o", outer / "nested-export").exit_code == 0
    assert cli("export", chain / "ckpt", "-o", outer / "nested-export", "--force").exit_code == 0
    assert cli("verify", outer).exit_code == 0


def test_a_dash_for_the_output_is_refused(cli, chain, tmp_path, monkeypatch):
    """`-o -` wrote a file named "-" (where `--prompts -` reads standard input)."""
    monkeypatch.chdir(tmp_path)
    result = cli("generate", chain / "ckpt", "-p", "hi", "--max-new-tokens", "2", "-o", "-")
    assert "'-' is no output path here" in _one_line_error(result) and result.exit_code == 2
    assert list(tmp_path.iterdir()) == []


def test_a_second_config_file_is_refused_not_dropped(cli, chain, tmp_path):
    """Click kept the last of a repeated --config: the first file's settings were dropped without a word."""
    (tmp_path / "a.toml").write_text("[pretrain]\nmax_steps = 1\n")
    (tmp_path / "b.toml").write_text("[pretrain]\nlr = 0.01\n")
    result = cli("pretrain", chain / "tokens", "-o", tmp_path / "out", "--config", tmp_path / "a.toml", "--config", tmp_path / "b.toml")
    assert "--config is given 2 times" in _one_line_error(result) and result.exit_code == 2
    assert not (tmp_path / "out").exists()


def test_export_and_import_refuse_unknown_config_keys(cli, chain, tmp_path):
    (tmp_path / "c.toml").write_text('[export]\nprecision = "bf16"\n[import]\nprecision = "bf16"\n')
    assert "unknown option(s)" in _one_line_error(cli("export", chain / "ckpt", "-o", tmp_path / "e", "--config", tmp_path / "c.toml"))
    assert "unknown option(s)" in _one_line_error(cli("import", chain / "hf", "-o", tmp_path / "i", "--config", tmp_path / "c.toml"))


def test_resume_with_an_unreadable_state_is_an_error_and_a_cut_final_save_falls_back(cli, chain, tmp_path):
    run = tmp_path / "run"
    settings = [*TINY_MODEL, "--batch-tokens", "256", "--micro-batch", "4", "--eval-every", "0", "--save-every", "1"]
    _ok(cli("pretrain", chain / "tokens", "-o", run, *settings, "--max-steps", "2"))
    state = run / "training_state.json"
    good = state.read_text()
    state.write_text(good[: len(good) // 2])  # a corrupt state of the finished run
    before = _digest(run)
    line = _one_line_error(cli("pretrain", chain / "tokens", "-o", run, *settings, "--max-steps", "3", "--resume"))
    assert str(state) in line and "unreadable" in line
    assert _digest(run) == before  # nothing overwritten
    # A final save cut short has no manifest yet: resume goes on from the newest step checkpoint.
    (run / "manifest.json").unlink()
    (run / "model.safetensors").write_bytes(b"")
    result = _ok(cli("pretrain", chain / "tokens", "-o", run, *settings, "--max-steps", "3", "--resume"))
    assert "resumed from step 2" in result.output
    assert artifacts.load(run).stats["step"] == 3 and artifacts.verify(run).ok


def test_resume_into_an_artifact_of_another_kind_is_refused(cli, chain, tmp_path):
    # (an export has no manifest: the run trained into it, replacing its weights)
    for source, made in (("tok", "a tokenizer artifact"), ("hf", "an llmkit export")):
        other = tmp_path / source
        shutil.copytree(chain / source, other)
        before = _digest(other)
        line = _one_line_error(cli("pretrain", chain / "tokens", "-o", other, *TINY_MODEL, *TINY_RUN, "--resume"))
        assert f"is {made}, not a training run: there is nothing in it to continue" in line
        assert _digest(other) == before
    # a sweep continues only a sweep (without --force it continues): it made a training run in progress one
    unfinished = tmp_path / "unfinished"
    unfinished.mkdir()
    (unfinished / ".llmkit-run").touch()
    (unfinished / "metrics.jsonl").write_text('{"step": 1, "loss": 5.0}\n')
    before = _digest(unfinished)
    line = _one_line_error(cli("sweep", chain / "tokens", "-o", unfinished, "--sizes", "1x32,2x32", "--head-dim", "16",
                               "--tokens", "2e4", "--seq-len", "32"))
    assert "is a checkpoint, not a sweep: there is nothing in it to continue" in line and _digest(unfinished) == before
    imported = tmp_path / "imported"  # a checkpoint, but no training run's: nothing to resume, nothing written into it
    _ok(cli("import", chain / "hf", "-o", imported))
    before = _digest(imported)
    line = _one_line_error(cli("pretrain", chain / "tokens", "-o", imported, *TINY_MODEL, *TINY_RUN, "--resume"))
    assert "no training run wrote" in line and f"--init-from {imported}" in line
    assert _digest(imported) == before and not (imported / ".llmkit-run").exists()
    mine = tmp_path / "mine"
    mine.mkdir()
    (mine / "notes.txt").write_text("mine")
    line = _one_line_error(cli("pretrain", chain / "tokens", "-o", mine, *TINY_MODEL, *TINY_RUN, "--resume"))
    assert "llmkit continues only its own runs" in line and "--force" not in line
    run = tmp_path / "run"
    run.mkdir()
    (run / ".llmkit-run").touch()
    (run / "checkpoints").write_text("x")
    line = _one_line_error(cli("pretrain", chain / "tokens", "-o", run, *TINY_MODEL, *TINY_RUN, "--resume"))
    assert "is a file where the run keeps its checkpoints folder" in line


@pytest.mark.parametrize("target,command,made,writes", [
    ("ckpt", ["tokenize", "{corpus}", "-t", "{tok}"], "a checkpoint", "a tokens artifact"),
    ("tokens", ["pretrain", "{tokens}", *TINY_MODEL, *TINY_RUN], "a tokens artifact", "a checkpoint"),
    ("tok", ["export", "{ckpt}"], "a tokenizer artifact", "an llmkit export"),
    ("hf", ["average", "{ckpt}", "{ckpt}"], "an llmkit export", "a checkpoint"),
    ("corpus", ["eval", "{ckpt}", "--data", "{tokens}"], "a corpus artifact", "an eval artifact"),
    ("ckpt", ["clean", "{book}"], "a checkpoint", "a corpus artifact"),
], ids=["tokenize-over-checkpoint", "pretrain-over-tokens", "export-over-tokenizer", "average-over-export",
        "eval-over-corpus", "clean-over-checkpoint"])
def test_force_replaces_only_an_output_of_the_kind_the_command_writes(cli, chain, tmp_path, target, command, made, writes):
    """`tokenize -o CKPT --force` replaced a checkpoint with tokens: a slip of one path cost a training run."""
    places = {name: chain / name for name in ("corpus", "tok", "tokens", "ckpt")} | {"book": chain / "book.txt"}
    out = tmp_path / target
    shutil.copytree(chain / target, out)
    before = _digest(out)
    args = [part.format(**places) for part in command]
    for force in ([], ["--force"]):
        line = _one_line_error(cli(*args, "-o", out, *force))
        assert f"is {made}, and this command writes {writes}; llmkit replaces an output only with another of its kind" in line \
            and "move it away" in line, line
        assert _digest(out) == before
    run = tmp_path / "unfinished"  # a training run before its manifest is a checkpoint in the making
    run.mkdir()
    (run / ".llmkit-run").touch()
    (run / "metrics.jsonl").write_text('{"step": 1, "loss": 5.0}\n')  # (its mark alone is either kind's)
    if writes != "a checkpoint":
        assert f"is a checkpoint, and this command writes {writes}" in _one_line_error(cli(*args, "-o", run, "--force"))
        assert (run / ".llmkit-run").is_file()


def _tamper(artifact: Path, tmp_path: Path, change) -> Path:
    """A copy of `artifact` whose manifest (JSON) went through `change`."""
    copy = tmp_path / f"tampered-{artifact.name}"
    shutil.copytree(artifact, copy)
    manifest = json.loads((copy / "manifest.json").read_text())
    change(manifest, copy)
    (copy / "manifest.json").write_text(json.dumps(manifest))
    return copy


def _set(key, value):
    def change(manifest, _):
        manifest[key] = value
    return change


def _link_out(manifest, copy):
    (copy / "model.safetensors").unlink()
    (copy / "model.safetensors").symlink_to("/etc/hostname")


def _escape(manifest, copy):
    manifest["files"]["../../escape.txt"] = "0" * 64


def _dtype(manifest, copy):
    manifest["stats"]["dtype"] = "uint32"


def _eos(manifest, copy):
    manifest["stats"]["eos_id"] = manifest["stats"]["bos_id"]


def _loop(manifest, copy):
    (copy / "model.safetensors").unlink()
    (copy / "model.safetensors").symlink_to("model.safetensors")


def _config_of_another_size(key, value):
    def change(manifest, copy):
        config = json.loads((copy / "model_config.json").read_text())
        (copy / "model_config.json").write_text(json.dumps({**config, key: value}))
        _redo_manifest(manifest, copy)
    change.signed = True  # (verify and inspect find nothing: the manifest vouches for the edit)
    return change


def _truncate(manifest, copy):
    weights = copy / "model.safetensors"
    weights.write_bytes(weights.read_bytes()[:100])


@pytest.mark.parametrize("source,change,message", [
    ("ckpt", _set("config", {"edited": True}), "was edited"),
    ("ckpt", _set("fingerprint", "0" * 64), "was edited"),
    ("ckpt", _set("files", ["model.safetensors"]), "'files' is not a JSON object"),
    ("ckpt", _set("kind", "weights"), "unknown kind 'weights'"),
    ("ckpt", _link_out, "leads outside the artifact"),
    ("ckpt", _escape, "a path outside the artifact"),
    ("ckpt", _truncate, "the manifest says"),
    ("ckpt", _loop, "a broken or looping link"),
    ("ckpt", _set("command", [1, 2]), "'command' is not a list of words"),
    # an edited model_config.json, signed again: a model of its size was built (2e9 rows: an unexpected
    # allocation error; 10**6 layers: built until memory ran out) before the weights were compared
    ("ckpt", _config_of_another_size("vocab_size", 2_000_000_000), "makes the embedding (2000000000, "),
    ("ckpt", _config_of_another_size("n_layer", 10**6), "says n_layer 1000000, but model.safetensors holds"),
    ("ckpt", _config_of_another_size("mlp_ratio", 1e8), "but model_config.json makes"),  # (a size only the meta model shows)
    ("ckpt", _config_of_another_size("mlp_ratio", 1e30), "model_config.json makes no model (empty(): argument"),
    ("ckpt", _config_of_another_size("mlp_ratio", float("inf")), "is not a valid model config"),
    ("ckpt", _config_of_another_size("context_length", 10**9), "says context_length 1,000,000,000, past the"),
    ("tokens", _dtype, "stats say dtype 'uint32'"),
    ("tokens", _eos, "its stats say vocabulary, eos and bos"),
])
def test_tampered_inputs_are_refused_on_load(cli, chain, tmp_path, source, change, message):
    tampered = _tamper(chain / source, tmp_path, change)
    command = ["pretrain", tampered, "-o", tmp_path / "out", *TINY_MODEL, *TINY_RUN] if source == "tokens" else \
        ["generate", tampered, "-p", "x", "-n", "2"]
    assert message in _one_line_error(cli(*command))
    assert not (tmp_path / "out").exists()
    if source != "tokens" and not getattr(change, "signed", False):  # stats are not hashed: only the stage that reads them can tell
        assert cli("inspect", tampered).exit_code != 0 and cli("verify", tampered).exit_code != 0
    if getattr(change, "signed", False):  # (finetune and --init-from built a model of the config's size: one reader now)
        assert message in _one_line_error(cli("finetune", tampered, "--data", chain / "sft.jsonl", "-o", tmp_path / "ft",
                                              "--max-steps", "1"))
        assert message in _one_line_error(cli("pretrain", chain / "tokens", "--init-from", tampered, "-o", tmp_path / "pt",
                                              *TINY_RUN))


def test_damage_that_loading_cannot_see_is_named_in_one_line(cli, chain, tmp_path):
    """Stats edited into the wrong shape (unhashed: load cannot tell), a shard overwritten with bytes
    of the same size: report and tokenize say the artifact looks damaged and what to run."""
    def train_as_number(manifest, _):
        manifest["stats"]["train"] = 5

    tampered = _tamper(chain / "tokens", tmp_path, train_as_number)
    line = _one_line_error(cli("report", tampered))
    assert "looks damaged" in line and "llmkit verify" in line, line
    corpus = tmp_path / "corpus"
    shutil.copytree(chain / "corpus", corpus)
    shard = next((corpus / "shards").iterdir())
    shard.write_bytes(shard.read_bytes()[:4] + bytes(shard.stat().st_size - 8) + shard.read_bytes()[-4:])
    line = _one_line_error(cli("tokenize", corpus, "-t", chain / "tok", "-o", tmp_path / "tokens"), after_progress=True)
    assert f"corpus shard {shard} cannot be read" in line and "llmkit verify" in line, line
    assert not (tmp_path / "tokens").exists()


@pytest.mark.parametrize("encoding,named", [("utf-16", "UTF-16"), ("utf-16-le", "UTF-16LE"), ("utf-16-be", "UTF-16BE"),
                                            ("utf-32", "UTF-32"), ("utf-32-le", "UTF-32LE")])
def test_utf16_and_utf32_files_are_named_by_every_reader(cli, chain, tmp_path, encoding, named):
    """Windows' "Unicode" text: NUL bytes between ASCII letters decode as UTF-8 without an error, so
    tokenizer train learnt NULs and eval scored BLEU 100 on two such files; with a byte-order mark
    the advice was latin-1's. Each reader names the encoding and the conversion."""
    text = "".join(line + "\n" for line in chain.joinpath("book.txt").read_text(encoding="utf-8").splitlines()[:40])
    (tmp_path / "wide.txt").write_bytes(text.encode(encoding))
    (tmp_path / "wide.jsonl").write_bytes('{"prompt": "ROMEO:", "response": "Ay."}\n'.encode(encoding) * 20)
    (tmp_path / "p.txt").write_text("a line\n" * 40, encoding="utf-8")
    (tmp_path / "wide.csv").write_bytes("text,label\nCafé crème brûlée à Noël,1\n".encode(encoding) * 20)
    (tmp_path / "wide.json").write_bytes('[{"text": "Ça va très bien"}]\n'.encode(encoding))
    (tmp_path / "wide.toml").write_bytes("[clean]\nexact_dedup = false\n".encode(encoding))
    commands = [("clean", tmp_path / "wide.json"), ("clean", chain / "book.txt", "--config", tmp_path / "wide.toml"),
                ("eval", chain / "ckpt", "--data", tmp_path / "wide.csv", "-m", "accuracy"),
                ("scaling", "fit", tmp_path / "wide.csv"), ("clean", tmp_path / "wide.csv"),("clean", tmp_path / "wide.txt"), ("tokenizer", "train", tmp_path / "wide.txt", "--vocab-size", "300"),
                ("eval", "--predictions", tmp_path / "p.txt", "--references", tmp_path / "wide.txt", "-m", "bleu"),
                ("finetune", chain / "ckpt", "--data", tmp_path / "wide.jsonl")]
    for command in commands:
        line = _one_line_error(cli(*command, "-o", tmp_path / "out"))
        file = next(Path(str(part)).name for part in command if str(part).startswith(str(tmp_path / "wide")))
        assert f"{file} is {named} text" in line and f"(e.g. iconv -f {named.lower()} -t utf-8)" in line, (command, line)
        assert not (tmp_path / "out").exists()
    line = _one_line_error(cli("generate", chain / "ckpt", "--prompts", tmp_path / "wide.jsonl"))
    assert f"is {named} text" in line, line


def test_a_text_file_with_nul_bytes_is_refused_by_clean_and_tokenizer_train_alike(cli, chain, tmp_path):
    """tokenizer train learnt merges of NUL runs from a binary file, then suggested running clean on
    it, which refuses such a file: both readers refuse it now, in the same words."""
    (tmp_path / "nul.txt").write_bytes(b"hello\x00world\n" * 50)
    for command in (("clean", tmp_path / "nul.txt"), ("tokenizer", "train", tmp_path / "nul.txt", "--vocab-size", "300")):
        line = _one_line_error(cli(*command, "-o", tmp_path / "out"))
        assert "nul.txt looks like a binary file (it contains NUL bytes)" in line, (command, line)
        assert not (tmp_path / "out").exists()
    # past the first 8 KB the check of a file's start sees none: tokenizer train finds it as it reads
    (tmp_path / "late.txt").write_bytes(b"plain words here\n" * 1000 + b"a\x00b\n")
    line = _one_line_error(cli("tokenizer", "train", tmp_path / "late.txt", "--vocab-size", "300", "-o", tmp_path / "out"),
                           after_progress=True)
    assert "late.txt holds a NUL byte (at byte 17001)" in line, line
    assert not (tmp_path / "out").exists()


def test_tokenizer_train_refuses_a_file_given_twice(cli, chain, tmp_path):
    """Overlapping globs gave a file twice, and its text weighed twice in the merges, unsaid."""
    book = chain / "book.txt"
    (tmp_path / "link.txt").symlink_to(book)
    os.link(book, tmp_path / "hard.txt")
    for twice, named in (((book, book), "book.txt is given twice"), ((book, tmp_path / "link.txt"), "link.txt and"),
                         ((tmp_path / "hard.txt", book), "book.txt and")):
        result = cli("tokenizer", "train", *twice, "--vocab-size", "300", "-o", tmp_path / "out")
        line = _one_line_error(result)
        assert result.exit_code == 2 and named in line and "give each file once" in line, line
        assert not (tmp_path / "out").exists()


def test_a_wide_file_is_judged_on_its_first_8_kb_not_on_one_disk_block(cli, chain, tmp_path):
    """The UTF-16 check samples 8 KB; the JSONL reader and clean peeked into a buffer of the file
    system's block size (4 KB here), in which this file's share of wide units is too small to tell."""
    from llmkit.jsonl import wide_encoding

    polish = '{"text": "Zażłć gęślą jaźń, a potem idziemy do domu na obiad i kolację razem."}\n'
    english = '{"text": "Then we all went home for dinner and supper together, as usual."}\n'
    data = (polish * 30 + english * 200).encode("utf-16-le")
    assert wide_encoding(data[:4096]) is None and wide_encoding(data[:8192]) == "UTF-16LE"  # (what makes the case)
    (tmp_path / "wide.jsonl").write_bytes(data)
    for command in (("clean", tmp_path / "wide.jsonl", "-o", tmp_path / "out"),
                    ("generate", chain / "ckpt", "--prompts", tmp_path / "wide.jsonl")):
        line = _one_line_error(cli(*command))
        assert "wide.jsonl is UTF-16LE text" in line, (command, line)


def test_wide_encodings_are_told_from_utf8_and_from_binary(shared_data):
    from llmkit.jsonl import wide_encoding

    french = "Café crème brûlée, naïve façade. Ça va très bien à Noël!\n" * 20  # one unit in ten accented
    for encoding, named in (("utf-16-le", "UTF-16LE"), ("utf-16-be", "UTF-16BE"), ("utf-32-le", "UTF-32LE"),
                            ("utf-32-be", "UTF-32BE"), ("utf-16", "UTF-16"), ("utf-32", "UTF-32")):
        assert wide_encoding(french.encode(encoding)[:8192]) == wide_encoding("ok\n".encode(encoding)) == named, encoding
    chinese = (shared_data / "chinese.txt").read_bytes()[:8192]
    for text in (chinese, french.encode(), "emoji 🎉 text\n".encode(), b"", b"a", bytes(10_000)):
        assert wide_encoding(text) is None
    numbers = b"".join(n.to_bytes(2, "little") for n in range(1, 256)) * 20  # small 16-bit numbers: binary
    assert wide_encoding(numbers[:8192]) is None


def test_text_that_is_not_utf8_is_refused_before_any_work(cli, chain, tmp_path):
    """An option's value, a file named by an option, or an input artifact's path that is not UTF-8
    (typed in latin-1, say) failed when the manifest was written, after all the work."""
    latin = os.fsdecode(b"\xff")
    line = _one_line_error(cli("clean", chain / "book.txt", "-o", tmp_path / "corpus", "--text-field", latin))
    assert "--text-field \\xff is not valid Unicode text (not UTF-8); give it in UTF-8" in line and not (tmp_path / "corpus").exists()
    (tmp_path / "c.yaml").write_bytes(b'text_field: "\\udcff"\n')  # the same from a config file: an escape there, named so
    line = _one_line_error(cli("clean", chain / "book.txt", "-o", tmp_path / "corpus", "--config", tmp_path / "c.yaml"))
    assert f"{tmp_path / 'c.yaml'}: --text-field holds a lone surrogate (\\udcff)" in line and "half of a pair" in line, line
    # (a pair of escapes is one character: YAML leaves the two halves apart, the config joins them)
    (tmp_path / "pair.yaml").write_bytes(b'text_field: "\\ud83d\\ude00"\n')
    (tmp_path / "emoji.jsonl").write_text('{"\U0001F600": "a document under an emoji field"}\n', encoding="utf-8")
    result = cli("clean", tmp_path / "emoji.jsonl", "-o", tmp_path / "emoji", "--config", tmp_path / "pair.yaml")
    assert result.exit_code == 0 and artifacts.load(tmp_path / "emoji").config["text_field"] == "\U0001F600", result.output
    data = os.fsdecode(os.path.join(os.fsencode(tmp_path), b"tr\xe9.jsonl"))
    Path(data).write_text('{"text": "x", "label": 0}\n')
    line = _one_line_error(cli("eval", chain / "ckpt", "--data", data, "-o", tmp_path / "ev"))
    assert "--data" in line and "tr\\xe9.jsonl is not valid Unicode text" in line and "rename the file" in line and not (tmp_path / "ev").exists()
    moved = os.fsdecode(os.path.join(os.fsencode(tmp_path), b"tok\xe9"))
    shutil.copytree(chain / "tokens", moved)
    line = _one_line_error(cli("pretrain", moved, "-o", tmp_path / "run", *TINY_MODEL, *TINY_RUN))
    assert "the artifact's path is not UTF-8" in line and "tok\\xe9" in line and not (tmp_path / "run").exists()


def test_a_full_disk_is_named(cli, chain, tmp_path, monkeypatch):
    import errno

    from llmkit.corpus import writer

    def full(self, *args, **kwargs):
        raise OSError(errno.ENOSPC, "No space left on device", str(tmp_path / "corpus" / "shards" / "part-00000.parquet"))

    monkeypatch.setattr(writer.ShardWriter, "add", full)
    line = _one_line_error(cli("clean", chain / "book.txt", "-o", tmp_path / "corpus"))
    assert "no space left on the device while writing" in line and "part-00000.parquet" in line
    assert not (tmp_path / "corpus").exists() and not list(tmp_path.glob(".corpus*"))


def test_a_full_disk_mid_run_keeps_the_run_and_says_to_resume(cli, chain, tmp_path, monkeypatch):
    """A training run that saved a checkpoint before the disk filled is kept: the line says how to go on
    from it (it said only to free space or write elsewhere, and the kept run went on filling the disk)."""
    import errno

    from llmkit.train.loop import Trainer

    saved = Trainer.save_intermediate

    def fill_after_the_first(self, step, **kwargs):
        if step > 2:
            raise OSError(errno.ENOSPC, "No space left on device", str(tmp_path / "run" / "checkpoints"))
        saved(self, step, **kwargs)

    monkeypatch.setattr(Trainer, "save_intermediate", fill_after_the_first)
    line = _one_line_error(cli("pretrain", chain / "tokens", "-o", tmp_path / "run", *TINY_MODEL, "--seq-len", "32",
                               "--batch-tokens", "256", "--micro-batch", "8", "--max-steps", "6", "--save-every", "2",
                               "--eval-every", "0"), after_progress=True)
    assert "no space left on the device" in line and "rerun the command with --resume" in line, line
    assert (tmp_path / "run" / "checkpoints" / "step_0000002" / "manifest.json").is_file()


def test_a_replacement_that_cannot_move_the_old_output_leaves_no_empty_folder_beside_it(tmp_path, monkeypatch):
    """--force over an output one may not move (its folder read-only): refused, and the empty `.NAME.old-*`
    made to hold it was left beside it; a file output that is a link to nothing is something there too."""
    from llmkit import outputs

    out = tmp_path / "out"
    out.mkdir()
    (tmp_path / ".new").mkdir()
    real = os.replace

    def refused(source, target):
        if Path(source) == out:
            raise PermissionError(13, "Permission denied", str(out))
        real(source, target)

    monkeypatch.setattr(os, "replace", refused)
    with pytest.raises(PermissionError):
        outputs._replace_dir(tmp_path / ".new", out)
    assert sorted(p.name for p in tmp_path.iterdir()) == [".new", "out"]
    monkeypatch.undo()
    (tmp_path / "gone.jsonl").symlink_to(tmp_path / "nothing.jsonl")
    from llmkit.errors import UserError

    with pytest.raises(UserError, match="already exists; pass --force"):
        outputs.check_output_file(tmp_path / "gone.jsonl", force=False)


def test_a_full_disk_under_safetensors_is_named_too(cli, chain, tmp_path, monkeypatch):
    """safetensors reports it in its own exception type, not as an OSError."""
    import safetensors.torch
    from safetensors import SafetensorError

    def full(*args, **kwargs):
        raise SafetensorError("Error while serializing: I/O error: No space left on device (os error 28)")

    monkeypatch.setattr(safetensors.torch, "save_file", full)
    line = _one_line_error(cli("export", chain / "ckpt", "-o", tmp_path / "hf"))
    assert line.startswith("error: no space left on the device; free some space") and "unexpected" not in line
    assert not (tmp_path / "hf").exists()


def test_an_unreadable_file_is_a_permission_error_not_damage(chain, tmp_path):
    """safetensors calls a file it may not read "No such file", which read as a damaged checkpoint
    ("rebuild it"); tokenizers' "Permission denied" read as a bad tokenizer ("retrain it"); report
    called an unreadable shard folder damage. (As root, read permission is dropped with setpriv.)"""
    import shutil
    import subprocess
    import sys

    drop = ["setpriv", "--inh-caps=-dac_override,-dac_read_search", "--bounding-set=-dac_override,-dac_read_search"]
    from conftest import in_ci

    if os.geteuid() == 0 and not shutil.which("setpriv"):
        (pytest.fail if in_ci() else pytest.skip)("root reads any file, and setpriv is not here to drop that")
    prefix = drop if os.geteuid() == 0 else []
    ckpt, corpus = tmp_path / "ckpt", tmp_path / "corpus"
    shutil.copytree(chain / "ckpt", ckpt)
    shutil.copytree(chain / "corpus", corpus)
    cases = [(ckpt / "model.safetensors", ["generate", str(ckpt), "-p", "hi", "-n", "2"]),
             (ckpt / "tokenizer" / "tokenizer.json", ["tokenize", str(corpus), "-t", str(ckpt), "-o", str(tmp_path / "t")]),
             (ckpt / "tokenizer" / "token_bytes.npy", ["generate", str(ckpt), "-p", "hi", "-n", "2"]),
             (corpus / "shards", ["report", str(corpus)]),
             # click's Path check made this one a usage error (exit 2, "Invalid value"), unlike clean's or eval's
             (tmp_path / "book.txt", ["tokenizer", "train", str(tmp_path / "book.txt"), "-o", str(tmp_path / "tok")])]
    (tmp_path / "book.txt").write_text("To be, or not to be.\n")
    for locked, command in cases:
        locked.chmod(0)
        try:
            result = subprocess.run([*prefix, sys.executable, "-m", "llmkit", *command], capture_output=True, text=True)
        finally:
            locked.chmod(0o755 if locked.is_dir() else 0o644)
        lines = result.stderr.strip().splitlines()
        assert result.returncode == 1 and len(lines) == 1, (command, result.stderr)
        assert f"permission denied: {locked}" in lines[0] and "rebuild" not in lines[0] and "retrain" not in lines[0], lines


def test_a_file_size_limit_and_a_quota_are_named_not_unexpected(cli, chain, tmp_path):
    """`ulimit -f`: writes fail with EFBIG (Python ignores SIGXFSZ), which was "unexpected", from
    pyarrow as from safetensors; a quota's (os error 122) under safetensors was too."""
    import errno
    import subprocess
    import sys

    from safetensors import SafetensorError

    from llmkit.errors import one_line

    for exc, says in ((OSError(errno.EFBIG, "File too large"), "a file grew past this file system's or your file-size limit"),
                      (SafetensorError("Error while serializing: I/O error: File too large (os error 27)"), "file-size limit"),
                      (SafetensorError("Error while serializing: I/O error: Disk quota exceeded (os error 122)"), "no space left"),
                      (SafetensorError("Error while serializing: invalid header (os error 2)"), "unexpected")):
        assert says in one_line(exc), (exc, one_line(exc))
    export = [sys.executable, "-m", "llmkit", "export", str(chain / "ckpt"), "-o", str(tmp_path / "hf")]
    result = subprocess.run(["bash", "-c", 'ulimit -f 40; exec "$@"', "limited", *export], capture_output=True, text=True)
    lines = result.stderr.strip().splitlines()
    assert result.returncode == 1 and len(lines) == 1 and "(ulimit -f)" in lines[0], result.stderr
    assert not (tmp_path / "hf").exists()


@pytest.mark.slow
def test_a_worker_error_under_two_processes_is_one_line(cli, chain, tmp_path):
    """Token ids outside the vocabulary (a damaged shard whose manifest was redone): the workers
    say so, and the parent prints it once, without torchrun's traceback."""
    import numpy as np

    def damage(manifest, copy):
        shard = copy / "train" / "shard-00000.bin"
        ids = np.fromfile(shard, dtype="<u2")
        ids[::7] = 60000
        ids.tofile(shard)
        manifest["files"]["train/shard-00000.bin"] = artifacts.sha256_file(shard)
        manifest["fingerprint"] = artifacts.Manifest.from_dict(manifest).expected_fingerprint()

    tampered = _tamper(chain / "tokens", tmp_path, damage)
    line = _one_line_error(cli("pretrain", tampered, "-o", tmp_path / "run", *TINY_MODEL, *TINY_RUN, "--nproc", "2"),
                           after_progress=True)
    assert "outside the vocabulary of 300" in line
    assert not (tmp_path / "run").exists()


@pytest.mark.parametrize("rows,extra,message", [
    ([{"text": "good film", "label": 1}, {"text": "bad film", "label": 10**9}], ["--task", "classify"], "beyond 10,000"),
    ([{"source": "a", "target": "b"}], ["--template", "{tmp}/index.json"], "only {field} names are allowed"),
    # a dotted name is looked up in the record's objects, never as a Python attribute
    ([{"source": "a", "target": "b"}], ["--template", "{tmp}/attr.json"], "has no field 'source.__class__'"),
])
def test_finetune_data_that_would_misbehave_is_refused(cli, chain, tmp_path, rows, extra, message):
    (tmp_path / "attr.json").write_text(json.dumps({"prompt": "{source.__class__}", "response": "{target}"}))
    (tmp_path / "index.json").write_text(json.dumps({"prompt": "{source[0]}", "response": "{target}"}))
    data = tmp_path / "data.jsonl"
    data.write_text("".join(json.dumps(r) + "\n" for r in rows * 8))
    result = cli("finetune", chain / "ckpt", "--data", data, "-o", tmp_path / "run", "--max-steps", "1",
                 *[e.format(tmp=tmp_path) for e in extra])
    line = _one_line_error(result)
    assert message in line and not (tmp_path / "run").exists()
    assert result.exit_code == (2 if "--template" in extra and "only {field}" in message else 1)  # (a bad --template: as an unknown name)


def test_eval_names_the_record_whose_template_field_is_not_text(cli, chain, tmp_path):
    data = tmp_path / "mt.jsonl"
    data.write_text(json.dumps({"source": "Hallo", "note": "x", "target": "Hello"}) + "\n\n"  # (named by its line: 3)
                    + json.dumps({"source": "Hallo", "note": None, "target": "Hello"}) + "\n")
    line = _one_line_error(cli("eval", chain / "ckpt", "-m", "bleu", "--data", data, "--prompt-template", "{note}: {source}",
                               "--max-new-tokens", "8", "-o", tmp_path / "ev"))
    assert f"{data}:3 field 'note' is null, not text" in line and not (tmp_path / "ev").exists()
    # ... after the prompts were fitted to the context too (they were a new list: "record 2")
    data.write_text(json.dumps({"source": "Hallo", "target": "Hello"}) + "\n\n\n" + json.dumps({"source": "Hi", "target": 5}) + "\n")
    line = _one_line_error(cli("eval", chain / "ckpt", "-m", "bleu", "--data", data, "-n", "8", "-o", tmp_path / "ev"))  # (-n as generate's)
    assert f"{data}:4 field 'target' is not text" in line, line


@pytest.mark.parametrize("template,message", [
    ("{source[0]}", "only {field} names are allowed"),
    ("{source!r}", "only {field} names are allowed"),
    ("{source.__init__.__globals__}", "has no field 'source.__init__.__globals__'"),  # (a key path, not attributes)
])
def test_eval_prompt_templates_take_plain_fields_only(cli, chain, tmp_path, template, message):
    data = tmp_path / "mt.jsonl"
    data.write_text(json.dumps({"source": "Hallo", "target": "Hello"}) + "\n")
    line = _one_line_error(cli("eval", chain / "ckpt", "-m", "bleu", "--data", data, "--prompt-template", template,
                               "--max-new-tokens", "8", "-o", tmp_path / "ev"))
    assert message in line and not (tmp_path / "ev").exists()


@pytest.mark.parametrize("name,content,message", [
    ("strings.jsonl", '"just a string"\n"another"\n', "a JSON string, not an object"),
    ("nulls.jsonl", '{"text": null}\n{"text": "fine"}\n', "field 'text' is null"),
    ("object.json", '{"text": "one object"}', "holds a single JSON object"),
    ("pretty.json", '\n{\n  "text": "one object"\n}\n', "holds a single JSON object"),  # (its first line is no whole value)
    ("nofield.jsonl", '{"title": "a", "body": "b"}\n', "no 'text' field; pass --text-field with one of: title, body"),
])
def test_clean_refuses_records_it_would_misread(cli, tmp_path, name, content, message):
    (tmp_path / name).write_text(content)
    before = _digest(tmp_path / name)
    assert message in _one_line_error(cli("clean", tmp_path / name, "-o", tmp_path / "out"))
    assert not (tmp_path / "out").exists() and _digest(tmp_path / name) == before


def test_clean_refuses_a_split_the_local_data_set_lacks(cli, shared_data, tmp_path):
    line = _one_line_error(cli("clean", "--dataset", shared_data / "sentiment", "--split", "validation", "-o", tmp_path / "out"))
    assert "has no split 'validation'; its splits are test, train" in line or "its splits are train, test" in line
    assert not (tmp_path / "out").exists()


@pytest.mark.parametrize("metric,rows,extra,message", [
    ("Perplexity", [{"text": "To be or not"}], [], "unknown metric 'Perplexity'; did you mean 'perplexity'?"),
    ("perplexity", [{"text": None}, {"text": "To be"}], [], "data.jsonl:1 field 'text' is null, not text"),
    ("rouge", [{"source": None, "target": "x"}], [], "data.jsonl:1 field 'source' is null"),
    ("accuracy", [{"text": "good", "label": "pos"}], ["--labels", "pos"], "at least two labels"),
])
def test_eval_refuses_what_it_would_score_wrongly(cli, chain, tmp_path, metric, rows, extra, message):
    data = tmp_path / "data.jsonl"
    data.write_text("".join(json.dumps(r) + "\n" for r in rows))
    line = _one_line_error(cli("eval", chain / "ckpt", "-m", metric, "--data", data, *extra, "-o", tmp_path / "ev"))
    assert message in line and not (tmp_path / "ev").exists()


def test_eval_records_one_spelling_of_the_metrics(cli, chain, tmp_path):
    _ok(cli("eval", chain / "ckpt", "-m", "perplexity,bpb", "--data", chain / "tokens", "-o", tmp_path / "a"))
    _ok(cli("eval", chain / "ckpt", "-m", "perplexity", "-m", "bpb", "-m", "bpb", "--data", chain / "tokens", "-o", tmp_path / "b"))
    assert artifacts.load(tmp_path / "a").fingerprint == artifacts.load(tmp_path / "b").fingerprint


def test_eval_cuts_long_prompts_as_finetune_does_and_says_so(cli, chain, tmp_path):
    from llmkit.data.tokenizer import load_tokenizer

    long_source = " ".join(["word"] * 400)
    data = tmp_path / "mt.jsonl"
    data.write_text(json.dumps({"source": long_source, "target": "short"}) + "\n" + json.dumps({"source": "hi", "target": "x"}) + "\n")
    result = _ok(cli("eval", chain / "ckpt", "-m", "bleu", "--data", data, "--max-new-tokens", "8", "-o", tmp_path / "ev"))
    assert "1 of 2 prompts did not fit in the 57 tokens a prompt may take of the context (64 tokens)" in " ".join(result.output.split())
    prompts = [json.loads(line)["prompt"] for line in (tmp_path / "ev" / "predictions.jsonl").read_text().splitlines()]
    tok = load_tokenizer(chain / "tok")
    assert long_source.startswith(prompts[0].rstrip("\n")) and prompts[0].endswith("\n")  # the end of the input went
    assert 1 + len(tok.encode(prompts[0])) <= 64 - 8 + 1 and prompts[1] == "hi\n"  # (the last new token is never fed back)
    # a reply past half the context: the prompt keeps half of it, as generate and chat keep one (engine.prompt_keep), the
    # reply sliding the window; eval kept 64 - 40 + 1 = 25 tokens, other predictions than generate's
    result = _ok(cli("eval", chain / "ckpt", "-m", "bleu", "--data", data, "--max-new-tokens", "40", "-o", tmp_path / "ev40"))
    assert "1 of 2 prompts did not fit in the 32 tokens a prompt may take" in " ".join(result.output.split())
    assert "1 of 2 prompts + --max-new-tokens 40 exceed the context (64 tokens): a prediction that runs that long slides" in \
        " ".join(result.output.split())
    kept = [json.loads(line)["prompt"] for line in (tmp_path / "ev40" / "predictions.jsonl").read_text().splitlines()][0]
    assert 64 - 40 + 1 < 1 + len(tok.encode(kept)) <= 32


def test_chat_says_when_a_checkpoint_was_never_fine_tuned_to_chat(cli, chain):
    from typer.testing import CliRunner

    from llmkit.cli import app

    result = CliRunner().invoke(app, ["chat", str(chain / "ckpt"), "-n", "2"], input="/exit\n")
    assert result.exit_code == 0 and "never fine-tuned to chat" in result.output


def _redo_manifest(manifest, copy):
    """Re-hash every file after a change, as a careless tool would: the manifest checks pass, the contents are wrong."""
    for name in list(manifest["files"]):
        manifest["files"][name] = artifacts.sha256_file(copy / name)
        manifest["sizes"][name] = (copy / name).stat().st_size
    manifest["fingerprint"] = artifacts.Manifest.from_dict(manifest).expected_fingerprint()


def _pickled_weights(manifest, copy):
    import pickle

    (copy / "model.safetensors").write_bytes(pickle.dumps({"not": "safetensors"}))
    _redo_manifest(manifest, copy)


def _wider_config(manifest, copy):
    config = json.loads((copy / "model_config.json").read_text())
    config["n_embd"] = 48
    (copy / "model_config.json").write_text(json.dumps(config))
    _redo_manifest(manifest, copy)


@pytest.mark.parametrize("change,message", [(_pickled_weights, "is not a readable safetensors file"),
                                            (_wider_config, "model_config.json makes the embedding (300, 48)")])
def test_damaged_weights_are_named_not_unexpected(cli, chain, tmp_path, change, message):
    tampered = _tamper(chain / "ckpt", tmp_path, change)
    assert message in _one_line_error(cli("generate", tampered, "-p", "x", "-n", "2"))
    data = tmp_path / "sft.jsonl"
    data.write_text(json.dumps({"prompt": "a", "response": "b"}) + "\n")
    assert message in _one_line_error(cli("finetune", tampered, "--data", data, "-o", tmp_path / "run", "--max-steps", "1"))


def test_unreadable_files_are_named_not_unexpected(cli, chain, tmp_path):
    import gzip

    packed = gzip.compress(b'{"text": "a document of words"}\n' * 50)
    for name in ("cut.json.gz", "cut.csv.gz", "cut.txt.gz"):
        (tmp_path / name).write_bytes(packed[: len(packed) // 2])
        assert "cannot be read" in _one_line_error(cli("clean", tmp_path / name, "-o", tmp_path / "out"))
    (tmp_path / "deep.jsonl").write_text('{"text": ' + "[" * 100_000 + "]" * 100_000 + "}\n")
    assert "nested too deeply" in _one_line_error(cli("clean", tmp_path / "deep.jsonl", "-o", tmp_path / "out"))
    assert "nested too deeply" in _one_line_error(cli("eval", chain / "ckpt", "--data", tmp_path / "deep.jsonl", "-o", tmp_path / "out"))
    (tmp_path / "latin.jsonl").write_bytes('{"prompt": "caf\xe9", "response": "x"}\n'.encode("latin-1"))
    assert "is not UTF-8" in _one_line_error(cli("finetune", chain / "ckpt", "--data", tmp_path / "latin.jsonl", "-o", tmp_path / "out"))
    (tmp_path / "c.toml").write_bytes('lr = 1 # caf\xe9\n'.encode("latin-1"))
    assert "is not UTF-8" in _one_line_error(cli("pretrain", chain / "tokens", "-o", tmp_path / "out", "--config", tmp_path / "c.toml"))
    assert not (tmp_path / "out").exists()


def test_multiple_choice_records_that_mix_field_names_are_named(cli, chain, tmp_path):
    rows = [{"query": "2+2?", "choices": ["3", "4"], "label": 1}, {"question": "1+1?", "choices": ["2", "5"], "label": 0}]
    data = tmp_path / "mc.jsonl"
    data.write_text("\n".join(json.dumps(r) + "\n" for r in rows))  # (a blank line between: named by line, 3)
    line = _one_line_error(cli("eval", chain / "ckpt", "-m", "accuracy", "--data", data, "-o", tmp_path / "ev"))
    assert f"the records mix field names: {data}:1 has 'query', {data}:3 has only question, choices, label" in line, line


def test_hf_greedy_generation_from_the_exported_folder_equals_llmkit_generate(cli, chain, tmp_path):
    """The exported tokenizer adds the document-start token llmkit conditions on (here <|eos|>: the
    model was pretrained on default shards), so the default `tok(prompt)` + `generate` agree."""
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer

    result = _ok(cli("generate", chain / "ckpt", "-p", "First Citizen:", "--greedy", "-n", "12", "--ignore-eos",
                     "-o", tmp_path / "ours.jsonl"))
    ours = json.loads((tmp_path / "ours.jsonl").read_text())
    tok = AutoTokenizer.from_pretrained(chain / "hf")
    model = AutoModelForCausalLM.from_pretrained(chain / "hf").eval()
    inputs = tok("First Citizen:", return_tensors="pt")
    assert inputs["input_ids"][0, 0].item() == tok.eos_token_id and inputs["input_ids"].shape[1] == ours["prompt_tokens"]
    with torch.no_grad():
        out = model.generate(**inputs, max_new_tokens=12, do_sample=False, eos_token_id=None, pad_token_id=tok.pad_token_id)
    assert tok.decode(out[0, inputs["input_ids"].shape[1]:]) == ours["completion"], result.output


def test_pretrain_init_from_continues_a_checkpoint_and_refuses_what_does_not_fit(cli, chain, tmp_path):
    from safetensors.torch import load_file

    run = tmp_path / "continued"
    _ok(cli("pretrain", chain / "tokens", "-o", run, "--init-from", chain / "ckpt", "--max-steps", "1", "--lr", "1e-9",
            "--batch-tokens", "256", "--micro-batch", "4", "--eval-every", "0", "--save-every", "0"))
    before, after = load_file(str(chain / "ckpt" / "model.safetensors")), load_file(str(run / "model.safetensors"))
    assert before.keys() == after.keys() and all((before[k] - after[k]).abs().max() < 1e-5 for k in before)
    art = artifacts.load(run)
    assert {i["role"] for i in art.manifest.inputs} >= {"tokens", "init"}
    assert "--n-layer" in _one_line_error(cli("pretrain", chain / "tokens", "-o", tmp_path / "x", "--init-from", chain / "ckpt",
                                              "--n-layer", "3"))
    _ok(cli("tokenizer", "train", chain / "corpus", "-o", tmp_path / "tok2", "--vocab-size", "280"))
    _ok(cli("tokenize", chain / "corpus", "-t", tmp_path / "tok2", "-o", tmp_path / "tokens2"))
    line = _one_line_error(cli("pretrain", tmp_path / "tokens2", "-o", tmp_path / "y", "--init-from", chain / "ckpt"))
    assert "another tokenizer" in line and not (tmp_path / "y").exists()


def test_generate_reads_records_as_eval_does_and_keeps_what_it_made(cli, chain, tmp_path, monkeypatch):
    prompts = tmp_path / "p.jsonl"
    prompts.write_text(json.dumps({"instruction": "Say it.", "input": "ROMEO:"}) + "\n" + json.dumps({"input": "JULIET:"}) + "\n")
    _ok(cli("generate", chain / "ckpt", "--prompts", prompts, "--greedy", "-n", "3", "-o", tmp_path / "a.jsonl"))
    records = [json.loads(line) for line in (tmp_path / "a.jsonl").read_text().splitlines()]
    assert [r["prompt"] for r in records] == ["Say it.\n\nROMEO:", "JULIET:"]
    # Stopped in the middle (here: the second batch fails), the records made so far are kept aside.
    from llmkit.inference import engine

    real = engine.generate_ids
    calls = []

    def fail_second(*args, **kwargs):
        calls.append(1)
        if len(calls) == 2:
            raise KeyboardInterrupt
        return real(*args, **kwargs)

    monkeypatch.setattr(engine, "generate_ids", fail_second)
    result = cli("generate", chain / "ckpt", "--prompts", prompts, "--greedy", "-n", "3", "--batch-size", "1", "-o", tmp_path / "b.jsonl")
    assert result.exit_code != 0 and not (tmp_path / "b.jsonl").exists()
    kept = (tmp_path / "b.jsonl.partial").read_text().splitlines()
    assert len(kept) == 1 and json.loads(kept[0])["prompt"] == "Say it.\n\nROMEO:"


def test_generate_fills_every_field_of_a_text_template(chain, tmp_path):
    from llmkit.data.templates import text_template
    from llmkit.inference.prompts import Prompt, encode_prompt
    from llmkit.model.io import load_checkpoint
    from llmkit.model.records import TaskRecord

    tok = load_checkpoint(chain / "ckpt").tokenizer
    task = TaskRecord(task="sft", template=text_template("t", "Translate to {lang}:\n{source}\n", "{target}"))
    record = {"source": "Guten Tag", "lang": "English"}
    ids = encode_prompt(Prompt(text="Guten Tag", record=record), tok, task)
    assert ids == [tok.bos_id] + tok.encode("Translate to English:\nGuten Tag\n")
    # without a record, the text fills the input field (the first one) and the others stay empty
    assert encode_prompt(Prompt(text="Hallo"), tok, task) == [tok.bos_id] + tok.encode("Translate to Hallo:\n\n")


def test_a_text_file_that_is_not_utf8_is_named_with_its_line(cli, chain, tmp_path):
    """Prompt, data, prediction and template files are read as UTF-8; a Latin-1 one is a one-line
    error naming the file and line, not an unexpected UnicodeDecodeError."""
    latin = tmp_path / "latin.txt"
    latin.write_bytes("first line\ncaf\u00e9 au lait\n".encode("latin-1"))
    template = tmp_path / "latin.json"
    template.write_bytes('{"prompt": "caf\u00e9 {input}", "response": "{target}"}'.encode("latin-1"))
    for args in (["generate", chain / "ckpt", "--prompts", latin],
                 ["eval", chain / "ckpt", "--data", latin, "-o", tmp_path / "e1"],
                 ["eval", "--predictions", latin, "--references", latin, "--metric", "bleu", "-o", tmp_path / "e2"],
                 ["finetune", chain / "ckpt", "--data", chain / "sft.jsonl", "--template", template, "-o", tmp_path / "f"]):
        line = _one_line_error(cli(*args))
        assert "is not UTF-8; convert the file" in line and ("latin.txt:2" in line or "latin.json:1" in line), (args, line)


def test_a_compressed_binary_or_array_file_given_as_jsonl_says_what_it_is(cli, chain, tmp_path):
    """A gzip or Parquet file was "not UTF-8; convert the file (e.g. iconv ...)", whose output is garbage; a
    .json file's multi-line array was "not valid JSON; one JSON object per line" at its first line. (A
    Parquet file named .parquet is read as records since 2026-12-07.)"""
    import gzip

    records = (chain / "sft.jsonl").read_bytes()
    (tmp_path / "data.jsonl.gz").write_bytes(gzip.compress(records))
    import pyarrow as pa
    import pyarrow.parquet as pq

    pq.write_table(pa.table({"prompt": ["a"], "response": ["b"]}), tmp_path / "data.parquet")
    (tmp_path / "parquet.jsonl").write_bytes((tmp_path / "data.parquet").read_bytes())
    import zipfile

    with zipfile.ZipFile(tmp_path / "data.zip", "w") as archive:
        archive.writestr("data.jsonl", records)
    objects = records.decode().splitlines()
    (tmp_path / "data.json").write_text("[\n" + ",\n".join(objects) + "\n]\n")
    (tmp_path / "one-line.json").write_text("[" + ", ".join(objects) + "]\n")
    (tmp_path / "stray.jsonl").write_text(objects[0] + "\n[\n")  # (JSONL with a bad line 2, not an array)
    (tmp_path / "array.jsonl").write_text("[" + objects[0] + ",\n" + objects[1] + "]\n")
    for name, said in (("data.jsonl.gz", "is a gzip file, not text; decompress it (gunzip)"),
                       ("parquet.jsonl", "is a Parquet file, not text; convert it to JSONL"),
                       ("data.zip", "is a zip archive, not text; unpack it"),
                       ("data.json", f"holds a JSON array; write one object per line (e.g. jq -c '.[]' {tmp_path / 'data.json'} > "
                                     f"{tmp_path / 'data.lines.jsonl'})"),
                       ("one-line.json", "holds a JSON array"), ("stray.jsonl", "stray.jsonl:2 is not valid JSON"),
                       # (the advice's output was the input's own name: run as given, it emptied the data)
                       ("array.jsonl", f"> {tmp_path / 'array.lines.jsonl'})")):
        line = _one_line_error(cli("finetune", chain / "ckpt", "--data", tmp_path / name, "-o", tmp_path / "f"))
        assert said in line and "iconv" not in line, (name, line)
    # and where text is read (prompts, a text file for a tokenizer)
    (tmp_path / "prompts.txt").write_bytes(gzip.compress(b"hello\n"))
    line = _one_line_error(cli("generate", chain / "ckpt", "--prompts", tmp_path / "prompts.txt"))
    assert "is a gzip file, not text" in line, line
    line = _one_line_error(cli("tokenizer", "train", tmp_path / "prompts.txt", "-o", tmp_path / "tok"))
    assert "is a gzip file, not text" in line, line


def test_a_run_at_the_longest_output_path_writes_its_step_checkpoints(cli, chain, tmp_path):
    """A run's own folders (checkpoints/step_N) lie in the room kept for the files inside an output:
    held to the run's own limit, an -o within 25 bytes of it failed at the first checkpoint, after
    the training."""
    import os

    from llmkit.outputs import MAX_PATH_BYTES

    left = MAX_PATH_BYTES - len(os.fsencode(os.path.abspath(tmp_path))) - 1
    parts = [("d" * 200) for _ in range(left // 201)]
    parts.append("r" * (left - 201 * len(parts)))
    out = tmp_path.joinpath(*parts)
    assert len(os.fsencode(os.path.abspath(out))) == MAX_PATH_BYTES
    result = cli("pretrain", chain / "tokens", "-o", out, *TINY_MODEL, "--max-steps", "1", "--batch-tokens", "512",
                 "--micro-batch", "8", "--save-every", "1")
    assert result.exit_code == 0, result.output
    assert (out / "checkpoints").is_dir() and (out / "manifest.json").is_file()


def test_force_over_an_output_that_is_read_only_for_the_user_is_refused_first(cli, chain, tmp_path):
    """Moving it aside failed only after the work ("permission denied", the training spent). Run as
    a user is (root's overrides dropped with setpriv), the folders really read-only."""
    out = tmp_path / "tok"
    assert cli("tokenizer", "train", chain / "corpus", "-o", out, "--vocab-size", "300").exit_code == 0
    before = {p.name: p.stat().st_mtime_ns for p in out.iterdir()}
    out.chmod(0o555)
    try:
        line = _one_line_error_of(_as_a_user(["tokenizer", "train", chain / "corpus", "-o", out, "--vocab-size", "300",
                                             "--force"], tmp_path))
    finally:
        out.chmod(0o755)
    assert f"output {out} exists and is read-only for you, so llmkit cannot replace it" in line, line
    assert {p.name: p.stat().st_mtime_ns for p in out.iterdir()} == before
    # a run's folder typed again without --force or --resume is told about those, not about replacing it
    run = tmp_path / "run"
    assert cli("pretrain", chain / "tokens", "-o", run, *TINY_MODEL, *TINY_RUN).exit_code == 0
    run.chmod(0o555)
    try:
        again = _one_line_error_of(_as_a_user(["pretrain", chain / "tokens", "-o", run, *TINY_MODEL, *TINY_RUN], tmp_path))
        resumed = _one_line_error_of(_as_a_user(["pretrain", chain / "tokens", "-o", run, *TINY_MODEL, *TINY_RUN, "--resume"],
                                                tmp_path))
    finally:
        run.chmod(0o755)
    assert "already exists; pass --resume to continue it or --force to start over" in again, again
    assert "is read-only for you, so llmkit cannot continue in it" in resumed, resumed
    # an empty folder, made for the run (or the output) with mkdir: taken without --force, as a data stage takes one
    for stage, args in (("pretrain", [chain / "tokens", *TINY_MODEL, *TINY_RUN]), ("tokenize", [chain / "corpus", "-t", chain / "tok"])):
        (tmp_path / f"made-{stage}").mkdir()
        result = cli(stage, *args, "-o", tmp_path / f"made-{stage}")
        assert result.exit_code == 0 and artifacts.load(tmp_path / f"made-{stage}").kind in ("checkpoint", "tokens"), result.output


def _as_a_user(args: list, cwd: Path):
    """`python -m llmkit ARGS` as a user without root's permission overrides (root's dropped with
    setpriv), so that a read-only folder is one."""
    import shutil
    import subprocess
    import sys

    from conftest import in_ci

    prefix = []
    if os.geteuid() == 0:
        if not shutil.which("setpriv"):
            (pytest.fail if in_ci() else pytest.skip)("root writes in any folder, and setpriv is not here to drop that")
        prefix = ["setpriv", "--inh-caps=-dac_override,-dac_read_search", "--bounding-set=-dac_override,-dac_read_search"]
    return subprocess.run([*prefix, sys.executable, "-m", "llmkit", *map(str, args)], cwd=cwd, capture_output=True,
                          text=True, timeout=300)


def _one_line_error_of(proc) -> str:
    lines = [line for line in proc.stderr.splitlines() if line.strip()]
    assert proc.returncode != 0 and len(lines) == 1 and lines[0].startswith("error:"), proc.stderr
    return lines[0]


def test_a_typed_run_length_beats_the_other_length_from_a_config_file(cli, chain, tmp_path):
    """`max_tokens` in the file and `--max-steps` typed: "give --max-steps or --max-tokens, not
    both", though a typed flag beats the file everywhere else. Typed both: still refused."""
    (tmp_path / "run.toml").write_text("[pretrain]\nmax_tokens = 100000\n")
    base = [*TINY_MODEL, "--batch-tokens", "256", "--micro-batch", "4", "--eval-every", "0", "--save-every", "0"]
    result = cli("pretrain", chain / "tokens", "-o", tmp_path / "run", *base, "--config", tmp_path / "run.toml", "--max-steps", "2")
    assert result.exit_code == 0, result.output
    config = artifacts.load(tmp_path / "run").config
    assert (config["max_steps"], config["max_tokens"]) == (2, None)
    both = cli("pretrain", chain / "tokens", "-o", tmp_path / "both", *base, "--max-steps", "2", "--max-tokens", "512")
    assert "give --max-steps or --max-tokens, not both" in _one_line_error(both)


def test_a_typed_length_or_validation_of_a_finetune_beats_the_other_from_a_config_file(cli, chain, tmp_path):
    """finetune's --epochs and --max-steps, --val-fraction and --val-data: one set in the file and
    the other typed was refused as both (and the hint a finished run gives, more --epochs or
    --max-steps, ran into it). Both set in one file are named with it."""
    base = ["--batch-size", "4", "--micro-batch", "4", "--eval-every", "0", "--save-every", "0"]
    (tmp_path / "ft.toml").write_text("[finetune]\nepochs = 3\nval_fraction = 0.2\n")
    (tmp_path / "held-out.jsonl").write_text("".join(json.dumps({"prompt": f"Say {w} now.", "response": w}) + "\n"
                                                     for w in ("yes", "no", "maybe", "never")), encoding="utf-8")
    result = cli("finetune", chain / "ckpt", "--data", chain / "sft.jsonl", "-o", tmp_path / "ft", *base,
                 "--config", tmp_path / "ft.toml", "--max-steps", "2", "--val-data", tmp_path / "held-out.jsonl")
    assert result.exit_code == 0, result.output
    config = artifacts.load(tmp_path / "ft").config
    assert config["max_steps"] == 2 and config["epochs"] != 3 and config["val_fraction"] != 0.2  # (the file's gave way)


@pytest.mark.parametrize("args,message", [
    (["--seq-len", "100000"], "is longer than the checkpoint's context length"),
    (["--template", "nope.json"], "template file not found: nope.json"),
    (["--template", "alpaca"], "unknown template 'alpaca'"),
    (["--lora-rank", "2", "--lora-targets", "bogus"], "--lora-targets bogus matches no linear layer"),
    (["--freeze", "bogus"], "--freeze bogus matches no parameter"),
    (["--nproc", "2", "--batch-size", "6", "--batch-invariant"], "--batch-invariant does not apply here"),
])
def test_a_finetune_option_value_found_wrong_later_is_still_a_usage_error(cli, chain, tmp_path, args, message):
    """Checked once the checkpoint is read, these exited 1, as a problem with the data would."""
    result = cli("finetune", chain / "ckpt", "--data", chain / "sft.jsonl", "-o", tmp_path / "ft", "--max-steps", "1", *args)
    assert result.exit_code == 2 and message in _one_line_error(result), result.output
    assert not (tmp_path / "ft").exists()


def test_a_config_file_that_sets_both_of_a_pair_is_named(cli, chain, tmp_path):
    (tmp_path / "both.toml").write_text("[pretrain]\nmax_steps = 2\nmax_tokens = 512\n")
    line = _one_line_error(cli("pretrain", chain / "tokens", "-o", tmp_path / "pt", *TINY_MODEL, "--config", tmp_path / "both.toml"))
    assert f"{tmp_path / 'both.toml'} sets both --max-steps and --max-tokens, which stand for one another; keep one" in line
    assert not (tmp_path / "pt").exists()


def test_a_null_in_a_config_file_leaves_its_option_unset_beside_its_pair(cli, chain, tmp_path):
    """A sweep writes every option into each run's configs/RUN.yaml, `max_steps: null` beside
    `max_tokens`: taken for both set, every sweep's runs were refused."""
    (tmp_path / "run.yaml").write_text("pretrain:\n  max_steps: 2\n  max_tokens: null\n")
    result = cli("pretrain", chain / "tokens", "-o", tmp_path / "pt", *TINY_MODEL, *TINY_RUN[2:], "--config", tmp_path / "run.yaml")
    assert result.exit_code == 0, result.output
    assert artifacts.load(tmp_path / "pt").config["max_steps"] == 2


def test_a_misspelt_name_is_offered_the_one_meant():
    """Presets, metrics and templates say "did you mean" as options, config keys and benchmarks did
    (`--model tinny` listed the presets only); a name nothing is close to gets the list alone."""
    from llmkit.data.templates import resolve_template
    from llmkit.errors import UsageError
    from llmkit.eval.names import parse_metrics
    from llmkit.model.presets import resolve_model_config

    for call, said in ((lambda: resolve_model_config("tinny", 256), "did you mean 'tiny'?"),
                       (lambda: resolve_model_config("gpt2_medium", 256), "did you mean 'gpt2-medium'?"),
                       (lambda: parse_metrics(["perplexty"]), "did you mean 'perplexity'?"),
                       (lambda: resolve_template("chatml"), "did you mean 'chat'?"),
                       # the start of a name (one rule with the options': errors.closest_names)
                       (lambda: resolve_model_config("tin", 256), "did you mean 'tiny'?"),
                       (lambda: resolve_model_config("gpt", 256), "did you mean 'gpt2', 'gpt2-xl' or 'gpt2-tiny'?")):
        with pytest.raises(UsageError, match=re.escape(said)):
            call()
    with pytest.raises(UsageError) as far:
        resolve_model_config("gpt2-small", 256)  # (not gpt2-xl, the nearest by letters)
    assert "did you mean" not in str(far.value) and "gpt2" in str(far.value)


def test_a_byte_order_mark_is_no_utf8_text_before_a_bad_byte(tmp_path):
    """A Windows editor's mark before a file's first line: the decoder's offsets come after it (the
    advice read 3 bytes early, the line was one short), and it is no UTF-8 text (a stray byte later in
    an ASCII file was told "fix that line" where the same file without the mark was told CP1252)."""
    from llmkit.corpus.reading import ReadOptions, ReadStats
    from llmkit.corpus.record_files import csv_reader
    from llmkit.errors import UserError
    from llmkit.jsonl import read_jsonl, read_text

    bom = b"\xef\xbb\xbf"
    cases = {  # name: (bytes after the mark, what both with and without the mark are told)
        "stray.jsonl": (b'{"text": "caf\xc3\xa9\x92 and more text here"}\n' + b'{"text": "hello world"}\n' * 5,
                        "the rest of the file reads as UTF-8"),
        "later.jsonl": (b'{"text": "plain ascii"}\n' * 3 + b'{"text": "caf\xe9 cr\xe8me"}\n', "iconv -f cp1252"),
        "stray.txt": (b"caf\xc3\xa9\x92 and more\n", "the rest of the file reads as UTF-8"),
        "later.txt": (b"ab\ncaf\xe9 cr\xe8me br\xfbl\xe9e\n", "iconv -f cp1252"),
        "later.csv": (b"text\nplain\n" + b"caf\xe9 cr\xe8me\n", "iconv -f cp1252"),
    }
    for name, (body, said) in cases.items():
        for mark in (b"", bom):
            path = tmp_path / name
            path.write_bytes(mark + body)
            with pytest.raises(UserError) as caught:
                if name.endswith(".jsonl"):
                    read_jsonl(path)
                elif name.endswith(".txt"):
                    read_text(path)
                else:
                    list(csv_reader(path, "t.csv", None)(ReadOptions(text_field=None), ReadStats()))
            message = str(caught.value)
            assert said in message, (name, mark, message)
            if name == "later.txt":
                assert f"{path}:2 is not UTF-8" in message, message  # (the mark made it line 1)
    # clean reading a whole file (--doc-per file) or a JSON array keeps the mark on: it is no UTF-8 text either
    from llmkit.corpus.reading import decode_utf8

    for mark in (b"", bom):
        with pytest.raises(UserError, match="iconv -f cp1252"):
            decode_utf8(mark + b"The caf\xe9 opens at nine.\nSecond line here.\n", "one.txt")
    # a later line's U+FEFF (files joined) is UTF-8 text: a stray byte after it is told "fix that line"
    with pytest.raises(UserError, match="the rest of the file reads as UTF-8"):
        decode_utf8(bom + b"caf\xe9 here", "joined.txt", 5)


def test_a_task_record_whose_labels_are_no_list_of_names_is_damaged():
    """(A re-signed task.json with "labels": "notalist" was read as the labels n, o, t, a, ...)"""
    from llmkit.errors import UserError
    from llmkit.model.records import TaskRecord

    for labels in ("notalist", [0, 1], [["a"], "b"]):
        with pytest.raises(UserError, match="its labels are not a list of names; the checkpoint is damaged"):
            TaskRecord.from_dict({"task": "classify", "labels": labels}, "ckpt/task.json")
    assert TaskRecord.from_dict({"task": "classify", "labels": ["neg", "pos"]}, "ckpt/task.json").labels == ["neg", "pos"]


def test_a_run_in_an_empty_folder_stopped_before_its_first_checkpoint_leaves_it_empty(tmp_path):
    """An empty folder made for the run (or a mount point) is used in place: it was moved aside as a
    replaced run, and a stop before the first checkpoint put it back saying "the run --force replaced is back"."""
    from llmkit.errors import advice_of
    from llmkit.train.launch import run_directory

    made = tmp_path / "made"
    made.mkdir()
    with pytest.raises(KeyboardInterrupt) as stopped:
        with run_directory(made, resume=False, force=False, inputs=[]):
            (made / "metrics.jsonl").write_text("{}\n")
            raise KeyboardInterrupt
    assert made.is_dir() and not any(made.iterdir()) and "--force" not in str(advice_of(stopped.value) or "")
    assert sorted(p.name for p in tmp_path.iterdir()) == ["made"]  # (no .made.replaced-* left beside it)


def test_a_training_stage_names_the_input_it_would_write_over_as_typed(cli, chain, tmp_path, monkeypatch):
    """(pretrain named it by its resolved path, the data stages as typed)"""
    monkeypatch.chdir(chain)
    for command in (["pretrain", "tokens", "-o", "tokens", "--force", *TINY_MODEL, *TINY_RUN],
                    ["finetune", "ckpt", "--data", "sft.jsonl", "-o", "ckpt", "--force"]):
        line = _one_line_error(cli(*command))
        target = command[1]
        assert f"-o {target} is the stage's input {target};" in line, line
