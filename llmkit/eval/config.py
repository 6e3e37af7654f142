"""The options of `llmkit eval` (docs/eval.md): declared once, here."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from llmkit.model.ensemble_options import Ensembling
from llmkit.inference.options import BeamSearch, Inference
from llmkit.options import Options, comma_list, group, option, path_strings, seed_option, unescape, unescape_each

# (the metric module's own list, llmkit.eval.metrics.rouge_tokenizers.NAMES, is not imported here:
# the metrics package loads evaluate, which `--help` need not; a test keeps the two equal)
ROUGE_TOKENIZERS = ("default", "unicode", "char")

METRIC_HELP = (
    "Metric to compute; repeat or comma-separate. bleu, chrf, chrf++, rouge (rouge1/2/L/Lsum), squad (exact_match, "
    "squad_f1: SQuAD's answer scores), "
    "perplexity (also word_perplexity, byte_perplexity, bpb), accuracy, accuracy_norm, precision, recall, f1, "
    "preference (of {prompt, chosen, rejected} pairs: preference_accuracy, preference_margin). "
    "Default: perplexity; accuracy,f1 for a classifier (finetune --task classify)."
)
DATA = "Data"
TEXT = "Text metrics (BLEU, chrF, ROUGE, SQuAD) and generation"
RUN = "Run"
BENCHMARKS = "Benchmarks"


def _task_list(value) -> list[str]:
    """--task a,b or repeated; an empty name (`--task ''`, `a,,b`) is a slip, refused rather than
    dropped (`--task ''` fell through to a perplexity run's error)."""
    items = value if isinstance(value, (list, tuple)) else [value]
    names = [part.strip() for item in items for part in str(item).split(",")]
    if any(not name for name in names):
        raise ValueError(f"a task name is empty in {','.join(names)!r}; name the benchmarks, or all")
    return names


def _label_names(value) -> list[str]:
    """--labels a,b,c: every name kept, so an empty or repeated one is refused rather than dropped
    or merged (two classes under one name would be scored as one)."""
    items = value if isinstance(value, (list, tuple)) else [value]
    names = [part.strip() for item in items for part in str(item).split(",")]
    _check_label_names(names)
    return names


def _check_label_names(names: list[str]) -> None:
    """(Also where a config file's list or Python gave them, which no parser reads: `labels: [neg, neg]`
    scored two classes as one, accuracy 1.0.)"""
    stripped = [str(name).strip() for name in names]
    if not all(stripped):
        raise ValueError(f"a label name is empty in {','.join(map(str, names))!r}; give one name per class, in index order")
    repeated = sorted({name for name in stripped if stripped.count(name) > 1})
    if repeated:
        raise ValueError(f"label names must differ, and {', '.join(repeated)} is given more than once")


@dataclass
class EvalConfig(Options):
    metrics: list[str] = option(default_factory=lambda: ["perplexity"], help=METRIC_HELP, flags=("--metric", "-m"), parse=comma_list)
    data: str | None = option(None, "Tokens artifact (val split), corpus, .txt/.jsonl/.parquet/.csv file, or datasets NAME[:CONFIG].",
                              flags=("--data", "-d"), panel=DATA)
    split: str = option("validation", "Split of a datasets source (a tokens artifact is read at its val split).", panel=DATA)
    predictions: str | None = option(None, "Predictions file (.txt one per line, or JSONL): score without a model.",
                                     flags=("--predictions",), cli_type=Path | None, parse=str, panel=DATA)
    references: list[str] = option(default_factory=list, help="Reference file(s) for --predictions; repeat for more reference sets.",
                                   flags=("--references", "-r"), cli_type=list[Path], parse=path_strings, panel=DATA)
    text_field: str | None = option(None, "JSONL field of the predictions / of the model input in --data (a.b: a nested one).", flags=("--field",), panel=DATA)
    reference_field: str | None = option(None, "JSONL field of the references (default: --field or target/summary/...).", panel=DATA)
    label_field: str | None = option(None, "Field of the gold label in --data (default: label/answer/gold).", panel=DATA)
    labels: list[str] = option(default_factory=list, help="Comma-separated label names, index order (default: the checkpoint's task.json).",
                               cli_type=list[str] | None, parse=_label_names, panel=DATA)
    reference: Path | None = option(None, "With -m preference: the checkpoint a DPO run started from, whose log-probabilities "
                                    "the rewards are measured against (adds reward_accuracy, reward_margin).", panel=DATA,
                                    hashed=False, recorded_as="input reference (its fingerprint)")
    limit: int | None = option(None, "Evaluate only the first N examples/documents (of each --task; of each MMLU subject).", panel=DATA, range="[1, inf)")
    tasks: list[str] = option(default_factory=list, help="Standard benchmark(s), comma-separated or repeated: hellaswag, arc_easy, "
                              "arc_challenge, piqa, boolq, openbookqa, sciq, winogrande, copa, social_iqa, commonsense_qa, rte, sst2, mrpc, triviaqa, "
                              "nq_open, lambada_openai (with --data), mmlu, or all (the bundled ones).",
                              flags=("--task",), parse=_task_list, panel=BENCHMARKS,
                              hashed=False, recorded_as="config benchmarks (with --task)")
    shots: int = option(0, "Few-shot demonstrations before each benchmark question, drawn with --seed from the task's pool (MMLU: the first of its subject's dev split).",
                        range="[0, inf)", panel=BENCHMARKS, hashed=False, recorded_as="config benchmarks (with --task)")
    bleu_tokenize: str = option("13a", "sacrebleu tokenizer: 13a, zh, intl, char, none, flores101, flores200, ...", panel=TEXT)
    lowercase: bool = option(False, "Case-insensitive BLEU/chrF.", flags=("--lowercase/--no-lowercase",), panel=TEXT)
    rouge_tokenize: str = option("default", "ROUGE tokenizer: default (rouge-score, Latin only), unicode (keeps every script), "
                                 "char (per character).", choices=ROUGE_TOKENIZERS, panel=TEXT)
    stemmer: bool = option(False, "Porter-stem words for ROUGE.", flags=("--stemmer/--no-stemmer",), panel=TEXT)
    prompt_template: str | None = option(None, "Prompt built from each record, e.g. 'German: {source}\\nEnglish:' (\\n typed is a newline).",
                                         parse=unescape, panel=TEXT)
    max_new_tokens: int = option(64, "Tokens to generate per example for the text metrics.", flags=("--max-new-tokens", "-n"), panel=TEXT,
                                 range="[1, inf)")
    stop: list[str] = option(default_factory=lambda: ["\n"], help="Stop string for generated predictions (default: newline; \\n is a "
                             "newline; '' for none: a fine-tuned model then ends at its end token).",
                             parse=unescape_each, panel=TEXT)
    bootstrap: int = option(0, "Resamples for 95% confidence intervals of BLEU, chrF, ROUGE, exact match, SQuAD F1, accuracy, F1 and perplexity, as NAME_ci95 "
                            "(the half-width; the perplexities' ends too, NAME_ci95_low/_high) (sacrebleu's bootstrap, its seed; "
                            "1000 is usual; 0 = none).", panel=RUN, range="[0, 100000]",
                            hashed=False, recorded_as="config bootstrap (when above 0)")
    rolling_context: int = option(1, "Perplexity windows: minimum tokens of context per scored chunk (1 = lm-eval).", panel=RUN,
                                  range="[1, inf)")
    batch_size: int = option(8, "Sequences per forward pass. Does not change the result.", panel=RUN, range="[1, inf)", runtime=True)
    beams: BeamSearch = group(BeamSearch, panel=TEXT)
    inference: Inference = group(Inference, panel=RUN, help={"compile": "torch.compile the decode step for generated metrics "
                                                           "(BLEU, chrF, ROUGE, SQuAD): faster per token after a compilation of seconds."})
    ensembling: Ensembling = group(Ensembling)
    seed: int = seed_option("Seed of the few-shot draw (--shots); recorded only where something is drawn.", hashed=False, recorded_as="manifest seed (null when nothing is drawn)")

    @property
    def draws(self) -> bool:
        """Whether the seed picks anything: only few-shot demonstrations are drawn (generation is greedy)."""
        return bool(self.tasks) and self.shots > 0

    def __post_init__(self):
        from llmkit.eval.names import parse_metrics

        super().__post_init__()
        self.metrics = parse_metrics(self.metrics)  # one spelling recorded, however they were typed
        try:
            _check_label_names(self.labels)
        except ValueError as exc:
            raise ValueError(f"--labels: {exc}") from None
        # `--stop ''` (or a config file's "") is none: a fine-tuned model then ends at its end token (a
        # stop string that matched before anything could only stop at once)
        self.stop = [s for s in self.stop if s]
        if 0 < self.bootstrap < 100:
            raise ValueError(f"--bootstrap {self.bootstrap} is too few resamples for a 95% interval; give 100 or more "
                             "(1000 is usual), or 0 for none")
        if isinstance(self.tasks, str):
            self.tasks = comma_list(self.tasks)
        if self.tasks:
            from llmkit.eval.benchmarks import task_names

            self.tasks = task_names(self.tasks)
            if self.metrics != parse_metrics(self.default_of("metrics")):
                raise ValueError("--task scores each benchmark its own way (acc, acc_norm); leave out --metric, "
                                "or run the metrics in another llmkit eval")
