"""The eval stage: `run_eval(checkpoint, config, out)` -> an eval artifact.

What runs depends on the metrics asked for and the inputs given:

  text metrics (bleu, chrf, rouge*, squad)    --predictions P --references R (no model), or a
                                               checkpoint generating from --data's source/document
  perplexity family (perplexity, bpb, ...)     checkpoint + --data (tokens artifact val split, text)
  classification (accuracy, precision, ...)    checkpoint + --data: multiple-choice records
                                               ({"choices": [...], "label": i}), or labelled texts
                                               scored by the classifier / by label log-likelihood;
                                               or --predictions/--references of labels (no model)

The artifact: metrics.json (flat name -> number), predictions.jsonl (one record per example or
document, with a "task" key), manifest (config, inputs, stats incl. sacrebleu signatures).
"""

from __future__ import annotations

import json
import math
import re
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from llmkit import artifacts, outputs
from llmkit.eval.config import EvalConfig
from llmkit.errors import NotFinite, UsageError, UserError, unused_options
from llmkit.eval import names as metric_names
from llmkit.eval.textio import is_jsonl, read_predictions, read_references, refuse_scoring_against_itself


@dataclass
class EvalResult:
    path: Path
    metrics: dict[str, float]
    signatures: dict[str, str]
    formatted: dict[str, str]
    stats: dict[str, Any] = field(default_factory=dict)


def _file_ref(value: str) -> Any:
    """Files are recorded by name and content hash, never by absolute path."""
    path = Path(value)
    if path.is_file():
        return {"file": path.name, "sha256": artifacts.sha256_file(path)}
    return value


def _recorded_config(cfg: EvalConfig) -> dict:
    data = cfg.hashed()
    if cfg.data and not (Path(cfg.data) / artifacts.MANIFEST).is_file():
        data["data"] = _file_ref(cfg.data)
    elif cfg.data:
        data["data"] = "artifact (see inputs)"
    if cfg.predictions:
        data["predictions"] = _file_ref(cfg.predictions)
    data["references"] = [_file_ref(r) for r in cfg.references]
    return data


def _task_record(checkpoint: Path):
    """The checkpoint's `task.json` record (None for a model that was not fine-tuned): what the model is."""
    from llmkit.model.records import read_task

    return read_task(artifacts.load(checkpoint, kind="checkpoint"))


def _is_classifier(checkpoint: Path | None) -> bool:
    """A classification checkpoint (`task.json` task classify): it classifies the bare text, no template."""
    if checkpoint is None:
        return False
    task = _task_record(checkpoint)
    return task is not None and task.is_classifier


def _generates(tasks: list[str]) -> bool:
    """Whether any of the --task benchmarks is answered by generating text (triviaqa, nq_open)."""
    if not tasks:
        return False
    from llmkit.eval.benchmarks import TASKS, task_names

    return any(TASKS[name].generates for name in task_names(tasks))


def _unused_options(cfg: EvalConfig, text: list, lm: list, cls: list, members: list, pref: list = ()) -> None:
    """Options that would change nothing in this evaluation are refused (they would still be
    recorded in the config, and change the fingerprint, for the same scores)."""
    scoring_model = cfg.predictions is None
    # a classifier checkpoint never sees a template (read only when one is given: it loads the checkpoint's manifest)
    template_read = scoring_model and not cfg.tasks and bool(text or (
        cls and (cfg.prompt_template is None or not _is_classifier(members[0] if members else None))))
    rouge = any(m.startswith("rouge") for m in text)
    tokens_data = scoring_model and cfg.data is not None and (Path(cfg.data) / artifacts.MANIFEST).is_file()
    # records with fields: a JSONL/CSV/Parquet file, a datasets name; not lines of text, nor an artifact (a corpus has
    # its text alone, a tokens artifact no fields)
    data_fields = scoring_model and not cfg.tasks and not tokens_data and _has_fields(cfg.data)
    uses = {  # option: (whether this evaluation reads it, what reads it)
        # (JSONL references fall back on --field without --reference-field)
        "text_field": (data_fields or (not scoring_model and (is_jsonl(Path(cfg.predictions)) or (
                           cfg.reference_field is None and any(is_jsonl(Path(r)) for r in cfg.references)))),
                       "records of a JSONL --data, --predictions or --references file (a .txt holds lines, a tokens "
                       "artifact no fields, and --task its benchmark's own)"),
        "data": (scoring_model, "a checkpoint's inputs; scored predictions read --references"),
        "prompt_template": (template_read, "text generated for the text metrics (BLEU, chrF, ROUGE, SQuAD) and a language model's choices or labels; "
                                           "a classifier checkpoint reads the bare text"),
        "max_new_tokens": (scoring_model and bool(text) and not cfg.tasks, "text generated for the text metrics (BLEU, chrF, ROUGE, SQuAD)"),
        "stop": (scoring_model and bool(text) and not cfg.tasks, "text generated for the text metrics (BLEU, chrF, ROUGE, SQuAD)"),
        # scored label files are compared as written, their labels read from --references
        "labels": (scoring_model and bool(cls), "accuracy/F1 of a checkpoint on labelled --data"),
        "label_field": (scoring_model and bool(cls), "accuracy/F1 of a checkpoint on labelled --data"),
        # (the char tokenizer has no words to stem; chrF has no tokenizer: sacrebleu ignores them there)
        "stemmer": (rouge and cfg.rouge_tokenize != "char", "ROUGE on words"), "rouge_tokenize": (rouge, "ROUGE"),
        "bleu_tokenize": ("bleu" in text, "BLEU"),
        "lowercase": (any(m.startswith(("bleu", "chrf")) for m in text), "BLEU/chrF"),
        "reference_field": ((bool(text) or (not scoring_model and bool(cls)))
                            and (data_fields or (not scoring_model and any(is_jsonl(Path(r)) for r in cfg.references))),
                            "the references of text metrics and labels, in records (a .txt holds one per line)"),
        # a file has no splits; the bundled benchmark data and a datasets name do
        "split": (scoring_model and ((cfg.data is None and bool(cfg.tasks)) or (cfg.data is not None and not Path(cfg.data).exists())),
                  "a datasets name given as --data, or a --task's bundled data"),
        "rolling_context": (bool(lm) and scoring_model, "perplexity"),
        "shots": (bool(cfg.tasks), "--task benchmarks"),
        "bootstrap": (not cfg.tasks and bool(text or cls or lm or pref), "confidence intervals of the scores (a --task benchmark has "
                      "its stderr)"),
        "reference": (scoring_model and bool(pref), "the rewards of -m preference (the reference texts of --predictions "
                                                    "are --references)"),
        # (runtime, so no fingerprint: but it would promise a speed-up that never comes)
        "num_beams": (scoring_model and bool(text) and not cfg.tasks, "text generated for the text metrics"),
        "length_penalty": (scoring_model and bool(text) and not cfg.tasks and cfg.beams.num_beams > 1,
                           "the beams of --num-beams (above 1) for the text metrics"),
        "compile": (scoring_model and (bool(text) or _generates(cfg.tasks)),
                    "the decode step of text generated for the text metrics (BLEU, chrF, ROUGE, SQuAD) and generation "
                    "benchmarks (triviaqa, nq_open)"),
    }
    from llmkit.options import flat_options, json_ready

    options = {option.name: option for option in flat_options(type(cfg))}  # (nested groups' too: --compile)
    values = cfg.flat()
    unused = [(options[name].flag, what) for name, (used, what) in uses.items()
              if not used and values[name] != json_ready(options[name].default)]
    unused += cfg.ensembling.single_model_flags(len(members))
    if unused:
        raise unused_options(unused)
    if cfg.beams.num_beams > 1 and cfg.inference.compile:  # (not built: generate says the same)
        raise UsageError(f"--num-beams {cfg.beams.num_beams} with --compile is not built; leave out --compile, or "
                         "--num-beams")


def _has_fields(data: str | None) -> bool:
    """Whether --data holds records whose fields an option names: not a .txt (text, or lines of it)."""
    if data is None:
        return False
    path = Path(data)
    return not path.is_file() or path.suffix.lower() not in (".txt", ".md", "")


def _check_plan(checkpoint: Path | None, cfg: EvalConfig, text: list, lm: list, cls: list) -> None:
    """Refuse impossible combinations before loading anything."""
    if cfg.predictions is not None:
        if lm and cfg.was_given("metrics") is False:  # perplexity by default, not asked for
            raise UsageError("scoring --predictions needs --metric (bleu, chrf, rouge, accuracy, f1, ...); the default, "
                            "perplexity, needs a model")
        if lm:
            raise UsageError(f"{', '.join(lm)} {'needs' if len(lm) == 1 else 'need'} a model: pass a checkpoint and --data, "
                            "not --predictions")
        if "accuracy_norm" in cls:
            raise UsageError(metric_names.NORM_NEEDS_CHOICES)
        if not cfg.references:
            needing = ", ".join(text + cls)
            raise UsageError(f"{needing}: scoring predictions needs references; pass --references FILE")
        return
    if cfg.references:
        raise UsageError("--references goes with --predictions; to evaluate a checkpoint pass --data instead")
    if checkpoint is None:
        raise UsageError("nothing to evaluate: pass a checkpoint (llmkit eval CKPT --data D) or --predictions P --references R")
    if cfg.data is None:
        named = [*text, *lm, *cls]
        raise UsageError(f"{', '.join(named)} on a checkpoint need{'s' if len(named) == 1 else ''} --data (a tokens artifact, "
                        "text or JSONL file)")


def _check_benchmark_plan(checkpoint: Path | None, cfg: EvalConfig) -> None:
    if checkpoint is None or cfg.predictions is not None:
        raise UsageError("--task scores a checkpoint: pass one (llmkit eval CKPT --task hellaswag), not --predictions")
    if cfg.metrics != ["perplexity"] or cfg.was_given("metrics"):  # (the default asked for by name: ignored before)
        raise UsageError(f"--task reports each benchmark's own metrics (acc, acc_norm); run --metric {','.join(cfg.metrics)} "
                         "in another llmkit eval")
    if cfg.data is not None and (Path(cfg.data) / artifacts.MANIFEST).is_file():
        raise UserError(f"--data {cfg.data} is an artifact; with --task it gives the benchmark's records (.jsonl, .parquet, "
                        "or a datasets name)")


def _load(members: list[Path], device: str, metrics: list[str], cfg: EvalConfig):
    """The checkpoint's model (the members' ensemble): a classifier (with `.classify`) for a classification checkpoint."""
    from llmkit.model.ensemble import load_ensemble

    checkpoint = members[0]
    ensemble = dict(weights=cfg.ensembling.weights, mode=cfg.ensembling.ensemble_mode)

    task = _task_record(checkpoint)
    if task is not None and task.is_classifier:
        needs_lm = [m for m in metrics if m not in metric_names.CLASSIFICATION]
        if needs_lm:
            raise UserError(
                f"{checkpoint} is a classification checkpoint (labels {', '.join(map(str, task.labels or []))}); "
                f"it cannot compute {', '.join(needs_lm)}; evaluate it with -m accuracy,f1"
            )
        return load_ensemble(members, device=device, purpose=None, **ensemble)
    return load_ensemble(members, device=device, purpose=", ".join(metrics), **ensemble)


def run_eval(checkpoint: Path | list[Path] | None, cfg: EvalConfig, out: Path, *, force: bool = False) -> EvalResult:
    """Evaluate `checkpoint` (several checkpoints: their ensemble, as does `cfg.ensembling.ensemble`)."""
    from llmkit.runtime import resolve_device

    members = cfg.ensembling.members(checkpoint)
    checkpoint = members[0] if members else None
    if len(members) > 1 and cfg.predictions is not None:
        raise UsageError("an ensemble makes its own predictions: pass --data, not --predictions")
    if cfg.ensembling.weights and len(cfg.ensembling.weights) != max(1, len(members)):
        raise UsageError(f"--weights has {len(cfg.ensembling.weights)} values for {len(members)} checkpoint(s); give one per checkpoint")

    device = resolve_device(cfg.inference.device)
    if (checkpoint is not None and cfg.predictions is None and not cfg.tasks and cfg.was_given("metrics") is False
            and _is_classifier(checkpoint)):
        # a classifier's own figures by default (perplexity, the default, is none of its); recorded as asked for
        cfg.metrics = ["accuracy", "f1"]
    names = metric_names.parse_metrics(cfg.metrics)
    text = metric_names.family(names, metric_names.TEXT)
    lm = metric_names.family(names, metric_names.LM)
    cls = metric_names.family(names, metric_names.CLASSIFICATION)
    pref = metric_names.family(names, metric_names.PREFERENCE)
    if cfg.tasks:
        _check_benchmark_plan(checkpoint, cfg)
        text, lm, cls, pref = [], [], [], []
    else:
        _check_plan(checkpoint, cfg, text, lm + pref, cls)
    _unused_options(cfg, text, lm, cls, members, pref)
    if text:
        from llmkit.eval.text_scores import check_options

        check_options(cfg.bleu_tokenize, cfg.rouge_tokenize)
    for member in members:
        artifacts.load(member, kind="checkpoint")
    read = [*members, cfg.data, cfg.predictions, *cfg.references, cfg.reference]
    outputs.check_output(out, force, inputs=read, writes="eval")

    scores = _Scores()
    started = time.perf_counter()
    with artifacts.create(out, "eval", force=force, inputs=read) as build:
        loaded = None
        if checkpoint is not None and cfg.predictions is not None:
            # predictions made elsewhere by this checkpoint: recorded in the lineage, not loaded
            build.add_input("checkpoint", artifacts.load(checkpoint, kind="checkpoint"))
        elif checkpoint is not None:
            import torch  # noqa: F401  (imported first so that seed_everything seeds it)

            from llmkit.runtime import seed_everything

            seed_everything(cfg.seed)  # (only the few-shot draw uses it: cfg.draws, which decides the recorded seed)
            loaded = _load(members, device, text + lm + cls + pref or ["benchmarks"], cfg)
            if cfg.inference.compile and text:  # refused before any scoring, not after perplexity has run
                from llmkit.inference.compiled import check_compilable

                check_compilable(loaded.model)
            for index, member in enumerate(loaded.members):  # (in the order they are mixed: load_ensemble)
                build.add_input("checkpoint" if len(members) == 1 else f"checkpoint:{index}", member)
        try:
            _score(cfg, loaded, build, text, lm, cls, scores, pref)
            _write_results(build.dir, scores)
        except NotFinite as exc:
            from llmkit.model.ensemble import scoring_members

            raise UserError(exc.explained(scoring_members(loaded) if loaded is not None else [])) from None
        # (a --bootstrap that gave no interval, one record or one window, with a note: the same scores as without it,
        # so the same artifact; it was recorded, another fingerprint for the same metrics.json, a review found)
        build.config = _recorded_eval_config(cfg, loaded.member_weights if loaded is not None else [])
        if not any(name.endswith("_ci95") for name in scores.metrics):
            build.config.pop("bootstrap", None)
        build.seed = cfg.seed if cfg.draws else None  # the same scores under any --seed are the same artifact
        build.stats = {**scores.stats, "signatures": scores.signatures, "metrics": list(scores.metrics)}
        build.runtime = {**cfg.runtime(), "device": device, "seconds": round(time.perf_counter() - started, 3)}
    return EvalResult(Path(out), scores.metrics, scores.signatures, scores.formatted, build.stats)


def _score(cfg: EvalConfig, loaded, build, text: list[str], lm: list[str], cls: list[str], scores: _Scores,
           pref: list[str] = ()) -> None:
    """Fill `scores`: from a predictions file, the benchmarks' tasks, or the model on --data."""
    if cfg.predictions is not None:
        _score_predictions_file(cfg, text, cls, scores)
    elif cfg.tasks:
        from llmkit.eval.benchmark_run import run_benchmarks

        task_metrics, task_records, task_stats = run_benchmarks(loaded, cfg)
        scores.metrics.update(task_metrics)
        scores.records.extend(task_records)
        scores.stats.update(task_stats)
    else:
        if (Path(cfg.data) / artifacts.MANIFEST).is_file():
            build.add_input("data", artifacts.load(cfg.data))
        _score_model(loaded, cfg, lm, text, cls, scores)
        if pref:
            _score_preferences(loaded, cfg, build, scores)
    if cfg.bootstrap and "accuracy" in scores.metrics:
        from llmkit.eval.metrics.classification import classification_intervals

        labelled = [r for r in scores.records if r["task"] in ("classification", "multiple_choice")]
        if len(labelled) < 2:
            from llmkit.eval.text_scores import note_one_example

            if not text:  # (else said already, by the text metrics)
                note_one_example()
            return
        normalized = [r["prediction_norm"] for r in labelled] if "accuracy_norm" in scores.metrics else None
        scores.metrics.update(classification_intervals([r["prediction"] for r in labelled], [r["label"] for r in labelled],
                                                       cfg.bootstrap, normalized))


@dataclass
class _Scores:
    """What an eval gathers: metrics.json's values, their signatures and printed forms,
    predictions.jsonl's records and the stats."""

    metrics: dict[str, float] = field(default_factory=dict)
    signatures: dict[str, str] = field(default_factory=dict)
    formatted: dict[str, str] = field(default_factory=dict)
    records: list[dict] = field(default_factory=list)
    stats: dict[str, Any] = field(default_factory=dict)


def _score_predictions_file(cfg: EvalConfig, text: list[str], cls: list[str], scores: _Scores) -> None:
    """--predictions made elsewhere, against --references (or the predictions' own file's field)."""
    predictions = read_predictions(Path(cfg.predictions), cfg.text_field)
    # --field names the references' column too, as a last resort, never in the predictions' own file
    # (each prediction would be scored against itself)
    own_file = any(Path(r).resolve() == Path(cfg.predictions).resolve() for r in cfg.references)
    if own_file:
        refuse_scoring_against_itself(Path(cfg.predictions), cfg.text_field, cfg.reference_field, labels=not text)
    references = read_references([Path(r) for r in cfg.references], cfg.reference_field, len(predictions),
                                 also=None if own_file else cfg.text_field, labels=not text,
                                 no_answer=metric_names.no_answer_allowed(text))
    if cfg.limit:
        predictions, references = predictions[: cfg.limit], references[: cfg.limit]
    scores.stats["examples"] = len(predictions)
    if not predictions:
        raise UserError(f"no predictions to score in {cfg.predictions}; give a file with one prediction per line "
                        "(or record)")
    if text:
        _text_metrics(text, predictions, references, cfg, scores)
    if cls:
        from llmkit.eval.metrics import classification_scores

        if any(len(r) != 1 for r in references):
            raise UserError("classification metrics take exactly one reference label per prediction")
        scores.metrics.update(classification_scores(predictions, [r[0] for r in references]))
        scores.records.extend(
            {"task": "classification", "index": i, "prediction": p, "label": r[0]}
            for i, (p, r) in enumerate(zip(predictions, references))
        )


def _score_model(loaded, cfg: EvalConfig, lm: list[str], text: list[str], cls: list[str], scores: _Scores) -> None:
    """The checkpoint's own scores on --data: perplexity, generated text against references, labels."""
    from llmkit.eval import model_tasks

    if lm:
        result = model_tasks.perplexity(loaded, cfg)
        scores.metrics.update(result.metrics)
        if cfg.bootstrap:
            scores.metrics.update(result.intervals(cfg.bootstrap))
        if "word_perplexity" in lm and "word_perplexity" not in result.metrics:  # (asked for by name)
            from llmkit.console import note

            why = ("the text holds no word (only whitespace)" if result.words == 0 else
                   f"{result.words:,} whitespace-separated words for {result.tokens:,} tokens, so exp(NLL / words) "
                   "overflows (text written without spaces, as Chinese is)")
            note(f"word_perplexity left out: {why}; bpb and byte_perplexity compare across tokenizers")
        scores.stats.update(
            {"tokens": result.tokens, "words": result.words, "bytes": result.bytes, "documents": result.documents, "nll": result.nll}
        )
        scores.records.extend({"task": "perplexity", **r} for r in result.per_document)
    if text:
        predictions, references, gen_records = model_tasks.generate_predictions(loaded, cfg)
        first = len(scores.records)
        _text_metrics(text, predictions, references, cfg, scores)
        # attach the prompt/input to the records the text metrics just wrote
        for record, extra in zip(scores.records[first:], gen_records):
            record.update(extra)
        scores.stats["examples"] = len(predictions)
    if cls:
        cls_metrics, cls_records = model_tasks.classification(loaded, cfg)
        scores.metrics.update(cls_metrics)
        scores.records.extend(cls_records)
        scores.stats["classification_examples"] = len(cls_records)


def _score_preferences(loaded, cfg: EvalConfig, build, scores: _Scores) -> None:
    """-m preference on --data's pairs; with --reference, the rewards against that checkpoint."""
    from llmkit.eval import preference

    reference = None
    if cfg.reference is not None:
        from llmkit.model.ensemble import load_ensemble

        art = artifacts.load(cfg.reference, kind="checkpoint")
        build.add_input("reference", art)
        device = next(loaded.model.parameters()).device  # (where the checkpoint itself was loaded)
        reference = load_ensemble([Path(cfg.reference)], device=device, purpose="the rewards of -m preference")
    metrics, records, columns = preference.preferences(loaded, cfg, reference)
    scores.metrics.update(metrics)
    scores.records.extend(records)
    scores.stats["preference_pairs"] = len(records)
    if cfg.bootstrap:
        if len(records) < 2:
            from llmkit.eval.text_scores import note_one_example

            note_one_example()
        else:
            scores.metrics.update(preference.intervals(list(metrics), columns, cfg.bootstrap))


def _write_results(folder: Path, scores: _Scores) -> None:
    """metrics.json and predictions.jsonl; a value that is not finite is refused, not written."""
    for name, value in scores.metrics.items():
        if isinstance(value, float) and not math.isfinite(value):
            raise NotFinite(f"{name} came out as {value}")
    (folder / "metrics.json").write_text(json.dumps(scores.metrics, indent=2) + "\n", encoding="utf-8")
    with open(folder / "predictions.jsonl", "w", encoding="utf-8") as handle:
        for number, record in enumerate(scores.records, 1):
            try:  # a NaN log-likelihood loses every comparison: its accuracy would look plausible
                line = json.dumps(record, ensure_ascii=False, allow_nan=False)
            except ValueError:
                raise NotFinite(f"prediction {number}") from None
            handle.write(line + "\n")


def _recorded_eval_config(cfg: EvalConfig, weights: list[float]) -> dict[str, Any]:
    """The eval's hashed config: its options, and what only some evals record (so that the configs of
    evals before each were added stay the same); an ensemble's `weights`, in its inputs' order."""
    config = _recorded_config(cfg)
    if cfg.bootstrap:
        config["bootstrap"] = cfg.bootstrap
    if cfg.tasks:
        config["benchmarks"] = {"tasks": list(cfg.tasks), "shots": cfg.shots}
        from llmkit.eval.benchmark_run import split_asked
        from llmkit.eval.benchmarks import TASKS, task_names

        # a task scored on a split of its own (MMLU's test) where --split was not given: the split scored is
        # recorded (the tasks' one split as --split would be, else each task's), so that the run is told from one
        # of the split the config names and equals one given it (only then: earlier evals keep their fingerprints)
        splits = {name: split_asked(TASKS[name], cfg) for name in task_names(cfg.tasks)}
        if len(set(splits.values())) == 1:
            config["split"] = next(iter(splits.values()))
        else:
            config["benchmarks"]["splits"] = splits
        config.pop("metrics", None)  # (the default perplexity: a benchmark run scores acc and acc_norm)
    ensemble = cfg.ensembling.recorded(weights)
    if ensemble:
        config["ensemble"] = ensemble
    return config


_NON_ASCII_LETTER = re.compile(r"(?![a-zA-Z])[^\W\d_]")


def _note_references_rouge_cannot_read(references: list[list[str]]) -> None:
    """rouge-score's default tokenizer keeps a-z and 0-9 only: a reference in another script has no
    token, and every ROUGE score of it is 0, which reads like a model that got nothing right; one
    with some such letters is scored on the rest alone (über as ber, a Chinese sentence by its
    numbers and Latin names: two unrelated ones scored 1.0), which reads like anything."""
    from llmkit.eval.metrics.rouge_tokenizers import make_tokenizer

    tokenize = make_tokenizer("default").tokenize
    unread = sum(1 for refs in references if any(r.strip() for r in refs) and not any(tokenize(r) for r in refs))
    dropped = sum(1 for refs in references if any(not r.isascii() and _NON_ASCII_LETTER.search(r) for r in refs))
    if dropped:
        from llmkit.console import note

        none = f", {unread} of them with none it keeps (they score 0 whatever was predicted)" if unread else ""
        note(f"{dropped} of {len(references)} references hold letters ROUGE's default tokenizer drops (it keeps a-z and "
             f"0-9 only: über is scored as ber){none}; --rouge-tokenize unicode (or char, for Chinese and Japanese) "
             "reads other scripts")


def _note_bleu_on_unspaced_text(references: list[list[str]]) -> None:
    """sacrebleu's 13a tokenizer splits at spaces and punctuation: Chinese or Japanese, written without
    spaces, is a sentence of a few long "words", and BLEU then counts whole clauses (10.7 where zh gave
    66.4 on the same 300 lines). sacrebleu warns only when told the target language."""
    text = "\n".join(r for refs in references for r in refs)
    letters = len(text) - len(re.sub(r"[^\W\d_]", "", text))  # (counted in C: no list of every character)
    unspaced = len(text) - len(re.sub("[\u3040-\u30ff\u3400-\u9fff\uf900-\ufaff]", "", text))
    if letters and unspaced > letters / 2:
        from llmkit.console import note

        note("most of the references' letters are Chinese or Japanese, which BLEU's default 13a tokenizer splits only at "
             "spaces and punctuation; --bleu-tokenize zh scores Chinese as sacrebleu's users do (ja-mecab, with "
             "MeCab installed, Japanese)")


def _text_metrics(text, predictions, references, cfg, scores: _Scores) -> None:
    from llmkit.eval.text_scores import score_text

    found = score_text(
        text,
        predictions,
        references,
        bleu_tokenize=cfg.bleu_tokenize,
        lowercase=cfg.lowercase,
        rouge_tokenize=cfg.rouge_tokenize,
        stemmer=cfg.stemmer,
        bootstrap=cfg.bootstrap,
    )
    scores.metrics.update(found.metrics)
    scores.signatures.update(found.signatures)
    if cfg.rouge_tokenize == "default" and any(name.startswith("rouge") for name in text):
        _note_references_rouge_cannot_read(references)
    if cfg.bleu_tokenize == "13a" and "bleu" in text:
        _note_bleu_on_unspaced_text(references)
    scores.formatted.update(found.formatted)
    for i, (prediction, refs) in enumerate(zip(predictions, references)):
        record = {"task": "text", "index": i, "prediction": prediction, "references": refs}
        for name, values in found.per_example.items():
            record[name] = values[i]
        scores.records.append(record)
