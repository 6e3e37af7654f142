"""Typed records a checkpoint carries from the stage that made it to the stages that read it.

  TaskRecord       task.json of a fine-tuned checkpoint: the task, its prompt template
                   (llmkit.data.templates), the class labels and head of a classifier, LoRA
  Labels           a classifier's classes, and the one reading of a data file's label as one of
                   them (finetune's training and validation data, eval's data)
  CheckpointStats  the `stats` of a checkpoint manifest: parameters, progress, losses

Each has one reader and one writer here; no stage reads the JSON on its own. The format is in
docs/finetune.md (task.json) and docs/pretrain.md (stats).
"""

from __future__ import annotations

import dataclasses
import math
import json
import re
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from llmkit.errors import UserError

TASK_FILE = "task.json"
TASKS = ("sft", "classify", "dpo")


@dataclass
class LoraRecord:
    rank: int
    alpha: float
    targets: list[str]
    layers: int
    merged: bool


# The fields a classifier's text is read from, in order: the first the first record has, in every
# record (fine-tuning's and eval's one rule: eval read `document` of records a fine-tune read `sentence` of).
CLASSIFY_TEXT_FIELDS = ("text", "sentence")


@dataclass
class Labels:
    names: list[str]
    original: list[Any]  # label values as they appear in the training data (ints or strings), id order
    called: str = "the training labels"  # (eval's --labels: "the classes")

    def index(self, value: Any, where: str, fix: str = "") -> int:
        found = self._find(value, where)
        if found is None:
            if not fix and self.called == "the training labels":  # (a validation or test record's class no example taught)
                fix = "; a class the training data lacks cannot be learned: leave such records out, or add examples of it to the training data"
            raise UserError(f"{where}: label {_as_json(value)} is not one of {self.called} "
                            f"{', '.join(map(_as_json, self.original))}{fix}")
        return found

    def _find(self, value: Any, where: str) -> int | None:
        """The class of a label: the training label of the same kind and value, else the one that
        reads the same (an integer 0 where the training labels are the strings "0", "1"), else the
        one a text label names without the spaces around it (a CSV's ` 1`, after a comma and a space);
        else, where no class is named by a number, the class a number indexes (SST-2's 0 and 1
        beside classes named neg and pos)."""
        found = self._lookup.get(label_key(value, where))
        if found is None:
            found = self._by_name.get(str(value))
        text = value.strip() if isinstance(value, str) else None
        if found is None and text is not None and text != value:
            found = self._by_name.get(text)
        if found is None and not any(_a_number(name) for name in self.names):
            index = value if isinstance(value, int) else int(text) if text and text.isascii() and text.isdigit() else None
            if index is not None and 0 <= index < len(self.names):
                found = index
                self._note_index(value, where)
        return found

    def _note_index(self, value: Any, where: str) -> None:
        """Said once: numbers read as positions among the class names is a guess (right for SST-2's 0 and 1
        beside neg and pos by luck of the alphabet; MNLI's 0 = entailment came out as contradiction, unsaid)."""
        if self._index_noted:
            return
        self._index_noted = True
        from llmkit.console import note

        mapping = ", ".join(f"{i} = {_as_json(name)}" for i, name in enumerate(self.names))
        note(f"{where}: label {_as_json(value)} names none of {self.called}, so numbers are read as positions among "
             f"them ({mapping}); if the data numbers its classes otherwise, write the class names instead")

    def __post_init__(self):
        self._lookup = {label_key(v, "label"): i for i, v in enumerate(self.original)}
        self._by_name = {name: i for i, name in enumerate(self.names)}
        self._index_noted = False


def _as_json(value: Any) -> str:
    """A value as the data file spells it (true, null), where it is JSON; else as Python does."""
    try:
        return json.dumps(value, ensure_ascii=False)
    except (TypeError, ValueError):
        return repr(value)


def _a_number(name: str) -> bool:
    """A class name that a number could mean: `1`, `-1`, `+1`, `0.5` (then numbers name classes, never index
    them); not `nan`, `inf` or `1e3`, which float() reads too."""
    return re.fullmatch(r"[+-]?(?:[0-9]+\.?[0-9]*|\.[0-9]+)", name.strip()) is not None


def label_key(value: Any, where: str) -> tuple[str, Any]:
    """A label as a class is told by: its kind and value (the integer 1 and the text "1" are two classes)."""
    if isinstance(value, bool) or not isinstance(value, (int, str)):
        raise UserError(f"{where}: label {_as_json(value)} must be an integer or a string")
    return (type(value).__name__, value)


@dataclass
class TaskRecord:
    task: str  # "sft" | "classify" | "dpo" (a generating model, as sft)
    template: dict[str, Any] | None = None  # sft: the prompt template the model was trained with
    labels: list[str] | None = None  # classify: class names, in head order
    label_values: list[Any] | None = None  # classify: the labels as the data spelled them
    head: dict[str, Any] | None = None  # classify: the head's shape (llmkit.model.classifier.head_spec)
    max_tokens: int | None = None  # classify: texts were cut to this many tokens, the start token included (--seq-len)
    # classify: the fields its data held the text and the label in, where named (--field, --label-field): eval's defaults
    text_field: str | None = None
    label_field: str | None = None
    lora: LoraRecord | None = None
    format_version: int = 1

    @property
    def is_classifier(self) -> bool:
        return self.task == "classify"

    @property
    def trained_labels(self) -> Labels | None:
        """A classifier's classes as its training data spelled them (None before label_values were recorded)."""
        if not self.is_classifier or not self.labels or self.label_values is None:
            return None
        return Labels(names=list(self.labels), original=list(self.label_values))

    @property
    def is_chat(self) -> bool:
        """Trained with the chat template: a plain prompt becomes a user message."""
        return (self.template or {}).get("type") == "chat"

    @property
    def text_template(self) -> dict[str, Any] | None:
        """The text template (prompt and response patterns), when the model was trained with one."""
        return self.template if (self.template or {}).get("type") == "text" else None

    def to_json(self) -> str:
        document: dict[str, Any] = {"task": self.task, "format_version": self.format_version}
        if self.template is not None:
            document["template"] = self.template
            if self.text_template is not None:
                # The legacy spelling of template["prompt"], still written for older readers; read by none.
                document["prompt_template"] = self.template["prompt"]
        for name in ("labels", "label_values", "head", "max_tokens", "text_field", "label_field"):
            if getattr(self, name) is not None:
                document[name] = getattr(self, name)
        if self.lora is not None:
            document["lora"] = dataclasses.asdict(self.lora)
        return json.dumps(document, indent=2, sort_keys=True) + "\n"

    def write(self, directory: Path) -> None:
        (Path(directory) / TASK_FILE).write_text(self.to_json(), encoding="utf-8")

    @classmethod
    def from_dict(cls, data: Any, where: str) -> TaskRecord:
        if not isinstance(data, dict) or data.get("task") not in TASKS:
            raise UserError(f"{where} is not a task record (no task sft, classify or dpo); the checkpoint is damaged, rebuild it")
        lora = data.get("lora")
        labels = data.get("labels")
        if labels is not None and (not isinstance(labels, list) or not all(isinstance(label, str) for label in labels)):
            raise UserError(f"{where}: its labels are not a list of names; the checkpoint is damaged, rebuild it")
        try:
            return cls(
                task=data["task"], template=data.get("template"), labels=data.get("labels"),
                label_values=data.get("label_values"), head=data.get("head"),
                max_tokens=int(data["max_tokens"]) if data.get("max_tokens") is not None else None,
                text_field=_field_name(data.get("text_field"), where), label_field=_field_name(data.get("label_field"), where),
                lora=LoraRecord(**lora) if isinstance(lora, dict) else None,
                format_version=int(data.get("format_version", 1)),
            )
        except (TypeError, ValueError) as exc:
            raise UserError(f"{where} is not a valid task record ({exc}); the checkpoint is damaged, rebuild it") from exc


def _field_name(value: Any, where: str) -> str | None:
    if value is not None and (not isinstance(value, str) or not value):
        raise UserError(f"{where}: a field name that is not a name ({value!r}); the checkpoint is damaged, rebuild it")
    return value


def read_task(art: Any) -> TaskRecord | None:
    """A checkpoint artifact's task record; None for a model that was not fine-tuned."""
    if TASK_FILE not in art.manifest.files:
        return None
    path = art.file(TASK_FILE)
    from llmkit.artifacts import checked_as_read

    try:
        with checked_as_read(path):  # (a same-size edit of its template was prompted in, unsaid)
            data = json.loads(path.read_text(encoding="utf-8"))
    except (json.JSONDecodeError, UnicodeDecodeError, RecursionError) as exc:
        raise UserError(f"{path} is not valid JSON ({exc}); the checkpoint is damaged, rebuild it") from None
    return TaskRecord.from_dict(data, str(path))


SAMPLING_FILE = "sampling.json"


@dataclass(frozen=True)
class SamplingRecord:
    """How a model's makers sample it (an import's generation_config.json, as transformers'
    `generate()` applies it: do_sample false is greedy, a top_k left out is its 50): generate and
    chat sample so where no sampling option is given, and export writes it back."""

    greedy: bool
    temperature: float = 1.0
    top_k: int | None = None
    top_p: float | None = None
    repetition_penalty: float = 1.0

    @classmethod
    def of_generation_config(cls, config: Any) -> SamplingRecord | None:
        """From a generation_config.json's mapping; None where it says nothing of sampling (GPT-2's)."""
        keys = ("do_sample", "temperature", "top_k", "top_p", "repetition_penalty")
        if not isinstance(config, dict) or not any(key in config for key in keys):
            return None
        # (a NaN or infinite value, which JSON readers take, is none: recorded, it made every later generate fail on an
        # option never typed, and an infinite top_k failed the import itself)
        def number(key: str, default):
            value = config.get(key)
            if not isinstance(value, (int, float)) or isinstance(value, bool):
                return default
            try:  # (an integer too large for a float: an OverflowError, no number either)
                return value if math.isfinite(value) else default
            except OverflowError:
                return default

        top_k, top_p = number("top_k", 50), number("top_p", 1.0)  # (transformers' own defaults)
        temperature, penalty = float(number("temperature", 1.0)), float(number("repetition_penalty", 1.0))
        record = cls(greedy=config.get("do_sample") is not True, temperature=temperature,
                     top_k=int(top_k) if top_k and top_k > 0 else None,
                     top_p=float(top_p) if 0 < top_p < 1 else None, repetition_penalty=penalty if penalty > 0 else 1.0)
        if record.temperature <= 0:  # (transformers refuses to sample at 0: greedy is what it means)
            record = dataclasses.replace(record, greedy=True)
        if record.greedy:  # (a greedy config's temperature and top-p draw nothing: transformers ignores them, and export
            # cannot write them back beside do_sample false)
            record = cls(greedy=True, repetition_penalty=record.repetition_penalty)
        return record

    def as_generation_config(self) -> dict[str, Any]:
        """generation_config.json's keys for it (export)."""
        if self.greedy:
            return {"do_sample": False, **({"repetition_penalty": self.repetition_penalty} if self.repetition_penalty != 1 else {})}
        return {"do_sample": True, "temperature": self.temperature, "top_k": self.top_k or 0, "top_p": self.top_p or 1.0,
                "repetition_penalty": self.repetition_penalty}

    def shown(self) -> str:
        parts = ["greedy"] if self.greedy else [f"temperature {self.temperature:g}"] + (
            [f"top-k {self.top_k}"] if self.top_k else []) + ([f"top-p {self.top_p:g}"] if self.top_p else [])
        return ", ".join(parts + ([f"repetition penalty {self.repetition_penalty:g}"] if self.repetition_penalty != 1 else []))

    def write(self, directory: Path) -> None:
        (Path(directory) / SAMPLING_FILE).write_text(json.dumps(dataclasses.asdict(self), indent=2, sort_keys=True) + "\n",
                                                     encoding="utf-8")


def read_sampling(art: Any) -> SamplingRecord | None:
    """A checkpoint's recommended sampling (sampling.json, an import's); None for one without."""
    if SAMPLING_FILE not in art.manifest.files:
        return None
    path = art.file(SAMPLING_FILE)
    from llmkit.artifacts import checked_as_read

    try:
        with checked_as_read(path):
            data = json.loads(path.read_text(encoding="utf-8"))
        return SamplingRecord(**data)
    except (json.JSONDecodeError, UnicodeDecodeError, RecursionError, TypeError) as exc:
        raise UserError(f"{path} is not a valid sampling record ({exc}); the checkpoint is damaged, rebuild it") from None


def recorded_document_start(art: Any) -> str | None:
    """"bos" or "eos": the token a checkpoint's pretraining documents followed, as its hashed config
    records it; None if unknown. (Stats held it before 2026-12-02; they are not hashed, so a value
    there is not read: an edit would change every prompt with verify content. Such a checkpoint
    falls back to its tokens' record, as an imported one without provenance does.)"""
    value = art.config.get("document_start")
    return value if value in ("bos", "eos") else None


@dataclass
class CheckpointStats:
    """A checkpoint manifest's `stats`. Fields a stage does not know stay None and are not written."""

    params: int | None = None
    trainable_params: int | None = None
    frozen_params: int | None = None
    lora_layers: int | None = None
    flops_per_token: int | None = None
    model: dict[str, Any] | None = None
    vocab_size: int | None = None
    tokenizer_vocab_size: int | None = None
    tokenizer_fingerprint: str | None = None  # of the artifact the tokens' tokenizer came from: a tokenizer, or a checkpoint's
    task: str | None = None
    labels: list[str] | None = None
    seq_len: int | None = None
    global_batch_sequences: int | None = None
    global_batch_tokens: int | None = None
    train_examples: int | None = None
    val_examples: int | None = None
    val_scored: int | None = None  # of val_examples, those each validation scores (--eval-examples, drawn at random)
    # fine-tuning: how each split's records became examples ({"training": {records, kept, blank, truncated, no_room,
    # prompt_emptied, repeated}, "validation": ...}); a classifier's examples per class, and the accuracy on the scored
    # validation examples of always answering training's commonest class (what val_accuracy is to be read against)
    examples: dict[str, dict[str, int]] | None = None
    class_counts: dict[str, dict[str, int]] | None = None
    val_majority_accuracy: float | None = None
    epochs: float | None = None
    max_steps: int | None = None
    step: int | None = None
    tokens_seen: int | None = None
    train_loss: float | None = None
    val_loss: float | None = None
    val_ppl: float | None = None
    # The step val_loss, val_ppl (and val_accuracy, val_f1) were measured at: a checkpoint saved
    # between validations carries the latest one, of earlier weights.
    val_step: int | None = None
    val_accuracy: float | None = None
    val_f1: float | None = None
    # --task dpo: how often the chosen reply's reward (beta x log pi/ref) beat the rejected one's, the mean
    # margin between them, and each mean (llmkit.finetune.preference.reward_scores)
    val_reward_accuracy: float | None = None
    val_reward_margin: float | None = None
    val_chosen_reward: float | None = None
    val_rejected_reward: float | None = None
    # --patience ended the run before --max-steps: {patience, best_step, best_val_loss, validations_since_best (after
    # best_step)}; with --min-delta also {min_delta, improved_step, improved_val_loss, validations_since_improved}: the
    # validation the later ones were counted against
    stopped_early: dict[str, Any] | None = None

    def to_dict(self) -> dict[str, Any]:
        return {k: v for k, v in dataclasses.asdict(self).items() if v is not None}

    @classmethod
    def of(cls, art: Any) -> CheckpointStats:
        """The stats of a checkpoint artifact, whichever llmkit version wrote them."""
        data = dict(art.stats)
        if "params" not in data and "parameters" in data:  # what `llmkit import` wrote before this record
            data["params"] = data["parameters"]
        known = {f.name for f in dataclasses.fields(cls)}
        return cls(**{k: v for k, v in data.items() if k in known})
