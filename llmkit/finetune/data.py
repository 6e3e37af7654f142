"""Fine-tuning data: JSONL records -> token examples -> padded batches keyed by sample index.

Batches are PADDED, not packed: each example is one row, right-padded to the longest row of
its micro-batch (of its step, under --batch-invariant, so that a row's shapes do not depend on
the split), so no example ever attends across a document boundary and nothing needs a
block-diagonal mask. For a causal model right padding is invisible to the real tokens; padded
targets are IGNORE_INDEX.

Global sample index k (as in pretraining) picks example perm_e[k mod N] where perm_e is a fresh
permutation of the N training examples for epoch e = k // N, seeded by (seed, e): a batch is a
pure function of (seed, k), so resume and any number of ranks see the same data.
"""

from __future__ import annotations

import functools
import hashlib
import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Sequence

import numpy as np
import torch

from llmkit.errors import UserError
from llmkit import artifacts, jsonl
from llmkit.console import note
from llmkit.data.templates import (Encoded, encode_chat_example, encode_example, fit_conversation, fit_fields, plain_fields,
                                   prompt_fields, record_messages, text_fields)
from llmkit.jsonl import field_value
from llmkit.model.gpt import IGNORE_INDEX
from llmkit.model.records import CLASSIFY_TEXT_FIELDS, Labels, label_key
from llmkit.table_records import dataset_records, looks_like_a_path


RECORD_FILE_SUFFIXES = (".jsonl", ".csv", ".parquet")
TRAINING_FILES = tuple(f"train{suffix}" for suffix in RECORD_FILE_SUFFIXES)
VALIDATION_FILES = tuple(f"{stem}{suffix}" for stem in ("validation", "val") for suffix in RECORD_FILE_SUFFIXES)


# The split a data set name is read at: --data's training split, --val-data's validation split.
DATASET_SPLITS = {False: "train", True: "validation"}


def is_dataset_name(path: Path | str) -> bool:
    """--data (or --val-data) naming a `datasets` data set, NAME[:CONFIG], rather than a file."""
    return not Path(path).exists() and not looks_like_a_path(str(path))


@functools.lru_cache(maxsize=4)
def _dataset(name: str, validation: bool) -> tuple[dict[str, Any], ...]:
    """A data set's records, read once per run (hashed for the manifest, then read for examples)."""
    return tuple(dataset_records(name, DATASET_SPLITS[validation]))


def forget_data_sets() -> None:
    _dataset.cache_clear()


def _stable_form(value: Any) -> str:
    """A data set value JSON has no form for, as the same text every run: bytes and arrays (an image's
    pixels) by their content; a date as written. (str() of an image named its address in memory: every
    run another hash, and every resume refused.)"""
    if isinstance(value, (bytes, bytearray, memoryview)):
        return hashlib.sha256(bytes(value)).hexdigest()
    if hasattr(value, "tobytes"):  # (numpy arrays; PIL images, their size and mode beside the pixels)
        shape = [getattr(value, name, None) for name in ("shape", "size", "mode", "dtype")]
        return hashlib.sha256(repr(shape).encode() + value.tobytes()).hexdigest()
    text = str(value)
    if " at 0x" in text:
        raise UserError(f"the data set holds {type(value).__name__} values, which have no stable form to record the data "
                        "by; drop those columns (Dataset.remove_columns) and pass the records as a file")
    return text


def data_file(path: Path, validation: bool = False) -> Path:
    """The file that --data (validation: --val-data) names: the file itself, or a folder's train.jsonl
    (.csv, .parquet; validation: its validation or val file; never its train file, the training data)."""
    path = Path(path)
    if not path.is_dir():
        return path
    found = [path / name for name in (VALIDATION_FILES if validation else TRAINING_FILES) if (path / name).is_file()]
    if len(found) > 1:  # (train.jsonl beside train.csv: which one was read went unsaid)
        raise UserError(f"{'--val-data' if validation else '--data'} {path} holds {' and '.join(f.name for f in found)}; pass "
                        "the file to read")
    if found:
        return found[0]
    if validation:
        raise UserError(f"--val-data {path} is a folder without validation.jsonl or val.jsonl (.csv, .parquet); pass the "
                        "validation file itself, or leave --val-data out to hold out --val-fraction of --data")
    return path / TRAINING_FILES[0]


@dataclass(frozen=True)
class Places(Sequence[str]):
    """What the messages call each record: where it stands in its file (`FILE:LINE`), made when a
    message needs it (a million records keep a million line numbers, not a million strings)."""

    prefix: str
    numbers: Sequence[int]

    def __getitem__(self, i: int) -> str:
        return f"{self.prefix}{self.numbers[i]}"

    def __len__(self) -> int:
        return len(self.numbers)

    def pick(self, positions: Sequence[int]) -> Places:
        return Places(self.prefix, [self.numbers[i] for i in positions])


def read_records(path: Path, validation: bool = False) -> tuple[list[dict[str, Any]], Places]:
    """The records of a data file (JSON Lines, CSV or Parquet) and where each stands in it (a
    table's by its row: `FILE record N`); or of a data set's split (`NAME train record N`)."""
    from llmkit.table_records import is_table, read_table_records

    flag = "--val-data" if validation else "--data"
    if is_dataset_name(path):
        records = list(_dataset(str(path), validation))
        if not records:
            raise UserError(f"{flag} {path} holds no records in its {DATASET_SPLITS[validation]} split")
        return records, Places(f"{path} {DATASET_SPLITS[validation]} record ", range(1, len(records) + 1))
    path = data_file(path, validation)
    if path.exists() and not path.is_dir() and not path.is_file():  # (/dev/null, a pipe: "not found" misled)
        raise UserError(f"{flag} {path} is not a regular file; write the records to a file and pass that")
    if not path.is_file():
        folder = "validation.jsonl or val.jsonl (.csv, .parquet)" if validation else "train.jsonl (.csv, .parquet)"
        raise UserError(f"{flag} file not found: {path}; pass a .jsonl, .csv or .parquet file (or a folder holding {folder})")
    if is_table(path):
        records = read_table_records(path, f"{flag} {path}")
        if not records:
            raise UserError(f"{path} holds no records")
        return records, Places(f"{path} record ", range(1, len(records) + 1))
    numbered = list(jsonl.iter_jsonl(path))
    if not numbered:
        raise UserError(f"{path} holds no records")
    return [record for _, record in numbered], Places(f"{path}:", [line for line, _ in numbered])


def file_digest(path: Path, validation: bool = False) -> str:
    """The data's content hash for the manifest: a file's bytes, or a data set's records (each as
    sorted-key JSON, a line each), so that the same records are the same run wherever they came from."""
    if is_dataset_name(path):
        digest = hashlib.sha256()
        for record in _dataset(str(path), validation):
            digest.update(json.dumps(record, sort_keys=True, ensure_ascii=False, default=_stable_form).encode() + b"\n")
        return digest.hexdigest()
    return artifacts.sha256_file(data_file(path, validation))


def split_validation(count: int, fraction: float, seed: int) -> tuple[list[int], list[int]]:
    """The positions of `count` records kept for training and held out for validation: a seeded
    `fraction` of them (at least one when fraction > 0), each list in file order."""
    if fraction <= 0 or count < 2:
        return list(range(count)), []
    held_count = min(count - 1, max(1, round(count * fraction)))
    order = torch.randperm(count, generator=torch.Generator().manual_seed(seed)).tolist()
    held = set(order[:held_count])
    return [i for i in range(count) if i not in held], [i for i in range(count) if i in held]


def _places(records: list, name: str, places: Sequence[str] | None) -> Sequence[str]:
    """What a message calls each record: where it stands in its file, else its place among `records`."""
    return places if places is not None else Places(f"{name} record ", range(1, len(records) + 1))


class Examples(list):
    """Encoded examples; `distinct`, their keys (`_example_key`: what repeats, and which validation
    examples are training ones, is told by, hashed once); `counts`: how the records became them
    (records read, examples kept, cut by --truncate, left out and why, repeats), which the manifest's
    stats keep (`examples`)."""

    counts: dict[str, int]

    def __init__(self, examples: Sequence, name: str, verbose: bool, cut: int, counts: dict[str, int]):
        super().__init__(examples)
        self.distinct = {_example_key(example) for example in self}
        repeated = len(self) - len(self.distinct)
        if verbose:
            _note_repeats(repeated, len(self), name, cut)
        self.counts = {**counts, "repeated": repeated}


def _note_repeats(repeated: int, total: int, name: str, cut: int) -> None:
    """A training example given more than once weighs more, unsaid: a data set concatenated twice, or
    records that differ only where the template does not read them; or texts cut (--truncate, `cut`
    of them) to the same start."""
    if not repeated or name != "training":
        return
    if cut:  # (SST-2 has no repeated text; cut to 12 tokens, 8 of its examples were the same)
        note(f"{repeated:,} of the {total:,} {name} examples repeat an earlier one (the same tokens and targets) once "
             f"--truncate cut {cut:,} of them to fit: each copy is trained on once more; a longer --seq-len keeps them apart")
    else:
        note(f"{repeated:,} of the {total:,} {name} examples repeat an earlier one (the same tokens and targets): each "
             "copy is trained on once more; remove the duplicates (llmkit clean removes exact ones) unless they are meant")


# -- SFT ------------------------------------------------------------------------------------------


def _a_blank_target(template: dict, record: dict) -> bool:
    """A text template's response fields all empty or whitespace: its wording around them (`English:
    {target}.`) is what the example would teach, as an answer to everything."""
    if template.get("type") != "text":
        return False
    values = [field_value(record, name) for name in plain_fields(template["response"], "the template")]
    return bool(values) and all(isinstance(value, str) and not value.strip() for value in values)


def _a_blank_reply(record: dict) -> bool:
    messages = record.get("messages")
    return isinstance(messages, list) and any(
        isinstance(m, dict) and m.get("role") == "assistant" and isinstance(m.get("content"), str) and not m["content"].strip()
        for m in messages)


def sft_examples(records: list[dict], template: dict, tokenizer, max_len: int, truncate: bool, name: str,
                 verbose: bool = True, places: Sequence[str] | None = None) -> list[Encoded]:
    """Encode records; an example the model cannot read in max_len positions is an error unless
    truncated. Its last token is only a target, never an input (as pretraining's windows of
    context + 1 tokens, and as generation, which never feeds its last token), so an example may
    hold max_len + 1 tokens.
    `places`: what the messages call each record (FILE:LINE), default its place among `records`."""
    examples, too_long, longest, longest_at, dropped, emptied, blank = [], 0, 0, 0, 0, 0, 0
    places = _places(records, name, places)
    fits = max_len + 1
    specials = set(tokenizer.special_ids.values())
    wording = unknown_wording(template, tokenizer) if verbose and name == "training" else None
    if wording:
        note(wording)
    unknown = UnknownText(tokenizer, name, len(records))
    for i, record in enumerate(records):
        example, without_prompt = encode_example(template, record, tokenizer, places[i]), False
        unknown.count(example.ids, example.learn, places[i])
        # An empty (or blank) response trained the end-of-text alone: "stop at once", unsaid. Left out, and counted;
        # so is a conversation with a blank assistant reply (the others' text hid it: the last one is the reply to learn)
        text = [token for token, learned in zip(example.ids[1:], example.learn[1:]) if learned and token not in specials]
        if not tokenizer.decode(text).strip() or _a_blank_reply(record) or _a_blank_target(template, record):
            blank += 1
            continue
        if len(example.ids) > longest:
            longest, longest_at = len(example.ids), i
        if len(example.ids) > fits:
            too_long += 1
            if not truncate:
                continue
            example, without_prompt = shorten(template, record, example, tokenizer, fits, places[i])
        # The first token is never a target (nothing predicts it): an example needs a learned token after it.
        if not any(example.learn[1:]):
            dropped += 1
            continue
        emptied += without_prompt
        examples.append(example)
    if too_long and not truncate:
        raise UserError(
            f"{too_long} of {len(records)} {name} examples are longer than {fits} tokens (the longest, {places[longest_at]}, "
            f"has {longest}): the "
            f"model reads {max_len} of them (the context length or --seq-len), the last being only predicted; pass "
            "--truncate to cut them, or use a checkpoint with a longer context"
        )
    if blank and verbose:
        note(f"{blank} of {len(records)} {name} examples left out: their response (or an assistant reply of the "
             "conversation) is empty or only whitespace, which would teach the model to stop at once; fill them in, or "
             "leave them out of the data")
    if not examples and name == "training" and blank == len(records):
        raise UserError(f"every {name} example's response is empty (or only whitespace); fill in the response field")
    if not examples and name == "training":
        raise UserError(f"no {name} example has a response token within {fits} tokens ({max_len} position{'s' if max_len != 1 else ''}: the "
                        "context length or --seq-len); shorten the prompts or responses, raise --seq-len if it is below the model's context "
                        "length, or use a checkpoint with a longer context")
    if verbose:
        unknown.note()
        unlearned = [example.unlearned_turns for example in examples if example.unlearned_turns]
        if unlearned:
            note(f"{sum(unlearned):,} assistant turn(s) of {len(unlearned):,} {name} conversations are not learned: the "
                 "model's own chat template renders them otherwise once a later message follows (Qwen3's drops an "
                 "earlier turn's <think> block), so they are not what it is prompted to write; each conversation's last "
                 "reply is learned")
    if too_long and verbose:
        parts = [f"{too_long} of {len(records)} {name} examples were cut to fit {max_len} positions (--truncate; "
                 f"{fits} tokens, the last one only predicted)"]
        if dropped:
            parts.append(f"{dropped} left out, their response not fitting")
        if emptied:
            parts.append(f"{emptied} kept without their prompt's text, their response alone taking the tokens (leave such "
                         "examples out of the data if the response means nothing without it)")
        note("; ".join(parts))
    cut = too_long if truncate else 0
    # (validation may end up empty: the run then has no validation loss)
    return Examples(examples, name, verbose, cut, {"records": len(records), "kept": len(examples), "blank": blank,
                                                    "truncated": cut, "no_room": dropped, "prompt_emptied": emptied})


def _example_key(example) -> bytes:
    """An example as the model sees it, its tokens and what it learns (SFT's targets, a class), as a
    16-byte digest (the bytes themselves held 9 a token: 0.9 GB for 100k examples of 1,024)."""
    tokens = np.asarray(example.ids, dtype=np.int64).tobytes()
    learned = bytes(example.learn) if hasattr(example, "learn") else b"|%d" % example.label  # (a preference pair: both replies)
    return hashlib.blake2b(tokens + b"/" + learned, digest_size=16).digest()


def check_held_apart(train: Sequence, val: Sequence, *, given: bool, verbose: bool) -> None:
    """Validation examples that are training examples too (the same tokens and targets, however the
    records were written: reordered, re-spaced JSON): all of a --val-data refused, as the very file is
    (`stage._check_held_apart`); otherwise noted, as their loss is the loss of examples trained on
    (a held-out share of data that repeats its records: the user chose none of them)."""
    if not val:
        return
    seen = train.distinct if isinstance(train, Examples) else {_example_key(example) for example in train}
    repeated = sum(_example_key(example) in seen for example in val)
    source = "--val-data" if given else "the held-out --val-fraction of --data"
    fix = ("give held-out records in --val-data" if given else
           "--data repeats its records: remove the duplicates (llmkit clean removes exact ones), or give --val-data")
    if repeated == len(val) and given:
        raise UserError(f"every one of the {len(val):,} validation examples ({source}) is also a training example: its loss "
                        f"and scores would measure nothing held out; {fix}")
    if repeated and verbose:
        which = ("the one validation example" if len(val) == 1 else f"all {len(val):,} validation examples"
                 if repeated == len(val) else f"{repeated:,} of the {len(val):,} validation examples")
        are = "is" if len(val) == 1 or repeated == 1 and repeated < len(val) else "are"
        what = "a training example" if are == "is" else "training examples"
        note(f"{which} ({source}) {are} also {what}, so the validation loss and scores count "
             f"{'it' if are == 'is' else 'them'} as seen; {fix}")


class UnknownText:
    """Examples holding text the tokenizer has no token for (a Unigram or WordPiece vocabulary without
    byte fallback, imported, writes `<unk>` for it): counted, and said once, with the first place, as
    the model would otherwise learn to read and write `<unk>` without a word. Byte-level tokenizers
    (llmkit's own) have none."""

    def __init__(self, tokenizer, name: str, total: int, texts: bool = False):
        self.unk, self.name, self.total, self.texts = tokenizer.unknown_text_id, name, total, texts
        self.examples = self.tokens = self.learned = 0
        self.first: str | None = None

    def count(self, ids: Sequence[int], learn: Sequence[bool] | None, where: str) -> None:
        if self.unk is None or self.unk not in ids:
            return
        self.examples += 1
        self.tokens += sum(token == self.unk for token in ids)
        if learn is not None:
            self.learned += sum(token == self.unk and flag for token, flag in zip(ids, learn))
        self.first = self.first or where

    def note(self) -> None:
        if not self.examples:
            return
        what = "texts" if self.texts else "examples"
        learned = f", {self.learned:,} of them in what the model learns to write" if self.learned else ""
        hold, tokens = "holds" if self.examples == 1 else "hold", "token" if self.tokens == 1 else "tokens"
        note(f"{self.examples:,} of {self.total:,} {self.name} {what} {hold} text this tokenizer has no token for "
             f"({self.tokens:,} <unk> {tokens}{learned}; the first: {self.first}): the model reads"
             f"{' and writes' if self.learned else ''} <unk> there; clean such characters out of the data, or fine-tune a "
             "model whose tokenizer covers them")


def unknown_wording(template: dict, tokenizer) -> str | None:
    """What a text template's own wording has that the tokenizer writes as `<unk>` (every example
    carries it there: a constant the model learns, but no longer the text the template says), named
    as the tokenizer cut it (a character, '\\n'; a word of a word-level vocabulary); None where it
    has none."""
    unk = tokenizer.unknown_text_id
    if unk is None or template.get("type") != "text":
        return None
    import string

    unknown = set()
    for part in ("prompt", "response"):
        for literal, _, _, _ in string.Formatter().parse(template[part]):
            encoded = tokenizer.hf.encode(literal or "", add_special_tokens=False)
            unknown |= {literal[a:b] for token, (a, b) in zip(encoded.ids, encoded.offsets) if token == unk}
    unknown = sorted(unknown)
    if not unknown:
        return None
    fix = "a template file (--template FILE.json) without them" if template.get("name") in ("plain", "translate", "summarize") \
        else "a template without them"
    return (f"the template's wording holds {', '.join(repr(char) for char in unknown)}, which this tokenizer has no token "
            f"for: every example carries <unk> there; {fix} keeps the text the model reads")


def shorten(template: dict, record: dict, example: Encoded, tokenizer, max_len: int, where: str) -> tuple[Encoded, bool]:
    """Fit an example into max_len tokens, and whether its prompt's text is gone (the response
    alone too long). A text template gives up the end of its prompt's text, the longest field
    first (the document, the source; an Alpaca record's input before its instruction), so that the
    prompt's wording and the whole response stay (llmkit.data.templates.fit_fields); where even
    empty fields leave the response too long, the example without them is cut from its end,
    keeping the wording and the response's start. A chat gives up what chat and generate give up
    of a conversation too long for the context (fit_conversation), so that the model learns its
    last reply from what it will read at inference: its oldest exchanges, then the end of the
    message the reply answers; where even that message emptied leaves the reply too long, the
    example with it empty is cut from its end (it was always cut from its end, which took the
    reply first)."""
    emptied = False
    if template["type"] == "chat":
        own = "jinja" in template  # (the model's own chat template: llmkit.data.templates.own_chat_format)
        *history, reply = record_messages(record, where)
        if history:
            def encode(messages: list[dict[str, str]]) -> list[int]:
                return encode_chat_example([*messages, reply], tokenizer, own, where).ids

            kept, _, cut = fit_conversation(history, tokenizer, max_len, encode=encode)
            # (emptied: no room even for an empty message, or cut to nothing and then fitting)
            emptied = cut is None or (cut and not kept[-1]["content"] and bool(history[-1]["content"]))
            if emptied:
                kept = [*kept[:-1], dict(kept[-1], content="")]
            example = encode_chat_example([*kept, reply], tokenizer, own, where)
            if cut is not False and kept[-1]["role"] == "assistant":
                example = _not_learned_where_cut(example, kept, reply, tokenizer, own)
    if template["type"] == "text":
        fields = text_fields(record, prompt_fields(template))
        if fields:  # (numbers are not cut: the example is cut from its end)
            fitted = fit_fields(lambda r: encode_example(template, r, tokenizer, where).ids, record, fields, tokenizer, max_len)
            written = [field for field in fields if field_value(record, field)]
            emptied = fitted is None or bool(written) and not any(field_value(fitted, field) for field in written)
            example = encode_example(template, fitted or dict(record, **dict.fromkeys(fields, "")), tokenizer, where)
    return Encoded(example.ids[:max_len], example.learn[:max_len], example.unlearned_turns), emptied


def _not_learned_where_cut(example: Encoded, kept: list[dict[str, str]], reply: dict[str, str], tokenizer,
                           own: bool = False) -> Encoded:
    """An assistant's message cut at its end (the last of `kept`, the one before the reply) taught the
    model to end a turn mid-sentence: its text and the role token that ends it are not learned."""
    from llmkit.data.templates import message_ids, own_assistant_turns

    cut = kept[-1]
    if own:  # (the model's own format: the cut turn is the last but one, where the template tells it apart)
        _, turns, _ = own_assistant_turns([*kept, reply], tokenizer)
        if len(turns) < 2 or turns[-2] is None:  # (the cut turn is the last but one; one not told apart is not learned)
            return example
        start, end = turns[-2]
        return Encoded(example.ids, [flag and not start <= k < end for k, flag in enumerate(example.learn)],
                       example.unlearned_turns)
    special = tokenizer.special_ids
    cut_role, reply_role = special[f"<|{cut['role']}|>"], special[f"<|{reply['role']}|>"]
    reply_role_at = len(example.ids) - 2 - len(message_ids(reply["content"], reply_role, tokenizer.eos_id, tokenizer))
    start = reply_role_at - len(message_ids(cut["content"], cut_role, reply_role, tokenizer))
    learn = list(example.learn)
    learn[start : reply_role_at + 1] = [False] * (reply_role_at + 1 - start)
    return Encoded(example.ids, learn)


def examples_digest(examples: Sequence[Encoded]) -> str:
    """A digest of encoded examples (ids and what is learned): a resume checks that the run's
    examples are still encoded as the saved steps were trained on."""
    digest = hashlib.sha256()
    for example in examples:
        ids = np.asarray(example.ids, dtype=np.int64)
        digest.update(np.int64(len(ids)).tobytes() + ids.tobytes() + np.asarray(example.learn, dtype=np.bool_).tobytes())
    return digest.hexdigest()


class ExampleBatches:
    """What every fine-tuning batch provider shares: its examples, each epoch's seeded order (or file
    order, for validation) and the examples at global sample indices (`rows`)."""

    def __init__(self, examples: Sequence, *, pad_id: int, seed: int, shuffle: bool = True):
        self.examples, self.pad_id = list(examples), pad_id
        self._order = _EpochOrder(len(self.examples), seed) if shuffle else None

    def __len__(self) -> int:
        return len(self.examples)

    def rows(self, indices: Sequence[int]) -> list:
        return _picked(self.examples, self._order, indices)


class SFTBatches(ExampleBatches):
    """(inputs, targets) for next-token loss on the learned (response) tokens only."""

    def pad_width(self, indices: Sequence[int]) -> int:
        """The longest input among these samples (a batch of them is padded to it)."""
        return self._width(self.rows(indices))

    def tokens(self, indices: Sequence[int]) -> int:
        """The input tokens of these samples, padding left out (what speed and tokens_seen count)."""
        return sum(len(r.ids) - 1 for r in self.rows(indices))

    @staticmethod
    def _width(rows: Sequence[Encoded]) -> int:
        return max(len(r.ids) for r in rows) - 1

    def __call__(self, indices: Sequence[int], width: int | None = None) -> tuple[torch.Tensor, torch.Tensor]:
        """Right-padded to `width` (default: the longest of these samples)."""
        rows = self.rows(indices)
        width = width or self._width(rows)
        x = torch.full((len(rows), width), self.pad_id, dtype=torch.long)
        y = torch.full((len(rows), width), IGNORE_INDEX, dtype=torch.long)
        for b, row in enumerate(rows):
            ids = torch.tensor(row.ids, dtype=torch.long)
            learn = torch.tensor(row.learn[1:], dtype=torch.bool)
            n = len(row.ids) - 1
            x[b, :n] = ids[:-1]
            y[b, :n] = torch.where(learn, ids[1:], torch.full_like(ids[1:], IGNORE_INDEX))
        return x, y


# -- classification -------------------------------------------------------------------------------


def check_held_out_labels(records: list[dict], training: list[dict], fraction: float, places: Sequence[str],
                          training_places: Sequence[str], field: str = "label") -> None:
    """Refuse a class whose every example the --val-fraction draw held out: the head would have no
    training example of it (said as the data's record, not as a position in the held-out share).
    Called before the training share's own label checks, which would blame the data instead."""
    taught = {label_key(_label(record, place, field), place) for record, place in zip(training, training_places)}
    for record, place in zip(records, places):
        if label_key(_label(record, place, field), place) not in taught:
            raise UserError(f"{place}: class {_label(record, place, field)!r} has no training example once --val-fraction "
                            f"{fraction:g} holds out its examples; add examples of it, give --val-data, or lower --val-fraction")


MAX_CLASSES = 10_000  # a head beyond this is a mistake in the data, not a task


def _label(record: dict, place: str, field: str = "label") -> Any:
    """A record's label, under `field` (--label-field; `a.b`: within its object a)."""
    value = field_value(record, field)
    if value is jsonl.ABSENT:
        fix = " (--label-field)" if field != "label" else " (or name the field holding it: --label-field NAME)"
        raise UserError(f"{place} has no {field!r}{fix}; classification data is {{\"text\": ..., \"label\": ...}}; "
                        f"its fields: {', '.join(record) or 'none'}")
    label_key(value, place)
    if isinstance(value, str) and not value.strip():  # (a CSV's empty cell: a class named "", unsaid)
        raise UserError(f"{place} has an empty label ({field!r} is {value!r}); give every record its class, or leave the "
                        "record out")
    return value


def label_set(records: list[dict], name: str, places: Sequence[str] | None = None, field: str = "label") -> Labels:
    """Labels in id order: integers keep their value as id (0..K-1), strings sort by name, those that
    are all whole numbers (a CSV's cells) by number, "2" before "10", as integers would."""
    places = _places(records, name, places)
    values = [_label(record, place, field) for record, place in zip(records, places)]
    kinds = {type(v) for v in values}
    if len(kinds) > 1:
        first = next(place for place, v in zip(places, values) if type(v) is not type(values[0]))
        raise UserError(f"{name} labels mix integers and strings ({places[0]} has {values[0]!r}, {first} "
                        f"{next(v for v in values if type(v) is not type(values[0]))!r}); use one kind")
    distinct = sorted(set(values))
    if kinds == {str} and all(value.isascii() and value.isdigit() for value in distinct):
        distinct.sort(key=lambda value: (int(value), value))
    if kinds == {int}:
        if distinct[0] < 0:
            raise UserError(f"{name} has a negative label {distinct[0]} ({places[values.index(distinct[0])]}); integer "
                            "labels are class ids 0..K-1")
        if distinct[-1] >= MAX_CLASSES:
            raise UserError(f"{name} has the label {distinct[-1]}: integer labels are class ids 0..K-1 and a head of "
                            f"{distinct[-1] + 1:,} classes is beyond {MAX_CLASSES:,}; write the labels as names (strings)")
        absent = sorted(set(range(distinct[-1] + 1)) - set(distinct))
        if absent and len(distinct) > 1:  # a head with classes no example teaches
            shown = ", ".join(map(str, absent[:3])) + (", ..." if len(absent) > 3 else "")
            raise UserError(f"{name} has integer labels up to {distinct[-1]} but no example of class {shown}; integer labels "
                            "are class ids 0..K-1, each with examples: renumber them, or write the labels as names (strings)")
    if kinds == {str}:  # "pos" and "pos " were two classes, unsaid: a stray space in a file is no class
        seen: dict[str, str] = {}
        for label in distinct:
            other = seen.setdefault(label.strip(), label)
            if other != label:
                at = places[values.index(label)]
                raise UserError(f"{name} has the labels {other!r} and {label!r} ({at}), the same but for spaces around them; "
                                "write each class one way")
    if len(distinct) > MAX_CLASSES:
        raise UserError(f"{name} has {len(distinct):,} distinct labels, more than {MAX_CLASSES:,} classes; is --task classify meant?")
    if len(distinct) < 2:
        raise UserError(f"{name} has a single label {distinct[0]!r}; classification needs at least two classes")
    return Labels(names=[str(v) for v in distinct], original=distinct)


def class_texts(records: list[dict], name: str, places: Sequence[str] | None = None, field: str | None = None) -> list[str]:
    """Each record's text, under `field` (--field), else the one name (of CLASSIFY_TEXT_FIELDS) the first record uses."""
    texts = []
    places = _places(records, name, places)
    given = field is not None
    if not given:
        field = next((f for f in CLASSIFY_TEXT_FIELDS if f in records[0]), CLASSIFY_TEXT_FIELDS[0]) if records else ""
    for record, place in zip(records, places):
        text = field_value(record, field)
        if not isinstance(text, str):
            if text is jsonl.ABSENT and given:
                raise UserError(f"{place} has no {field!r} (--field); its fields: {', '.join(record) or 'none'}")
            text = None if text is jsonl.ABSENT else text
            other = field not in record and next((f for f in CLASSIFY_TEXT_FIELDS if f != field and f in record), None)
            mixed = f" (it has {other!r} where {places[0]} has {field!r}: use one name in every record)" if other else ""
            if text is not None and not mixed:  # (a list or a number there was "no 'text' string")
                from llmkit.jsonl import json_kind

                mixed = f" (its {field!r} is {json_kind(text)})"
            fix = "" if given or mixed else " (or name the field holding the text: --field NAME)"
            raise UserError(f"{place} has no {field!r} string{mixed}; classification data is {{\"text\": ..., \"label\": ...}}"
                            f"{fix}")
        texts.append(text)
    return texts


@dataclass
class ClassExample:
    ids: list[int]
    label: int


def classify_examples(records: list[dict], labels: Labels, tokenizer, max_len: int, truncate: bool, name: str,
                      verbose: bool = True, places: Sequence[str] | None = None, text_field: str | None = None,
                      label_field: str = "label") -> list[ClassExample]:
    """[BOS] text, as `llmkit eval` feeds a classifier; longer than max_len is an error unless truncated."""
    places = _places(records, name, places)
    texts = class_texts(records, name, places, text_field)
    blank = sum(1 for text in texts if not text.strip())
    if texts and blank == len(texts) and name == "training":  # (the run reported an accuracy for a model that saw [BOS])
        raise UserError(f"every {name} text is empty (or only whitespace): a classifier would learn no more than how often "
                        "each label comes; fill in the text field")
    if blank and verbose:
        note(f"{blank} of {len(records)} {name} texts are empty (or only whitespace): the classifier learns no more from "
             "them than how often their labels come; fill them in, or leave them out of the data")
    encoded = tokenizer.encode_batch(texts)
    examples, too_long, longest, longest_at = [], 0, 0, 0
    unknown = UnknownText(tokenizer, name, len(records), texts=True)
    for i, (ids, record) in enumerate(zip(encoded, records)):
        unknown.count(ids, None, places[i])
        ids = [tokenizer.bos_id] + ids
        if len(ids) > longest:
            longest, longest_at = len(ids), i
        if len(ids) > max_len:
            too_long += 1
            ids = ids[:max_len]
        examples.append(ClassExample(ids, labels.index(_label(record, places[i], label_field), places[i])))
    if examples and name == "training" and max_len <= 1:  # (with or without --truncate: its advice led here)
        # (as SFT refuses examples with no response token in reach: here the model would read no text at all)
        raise UserError(f"{max_len} position (--seq-len {max_len}) holds the start token alone: the classifier would read none "
                        "of the texts; raise --seq-len")
    if too_long and not truncate:
        raise UserError(
            f"{too_long} of {len(records)} {name} texts are longer than {max_len} token{'s' if max_len != 1 else ''} (the longest, {places[longest_at]}, "
            f"has {longest}), the "
            "model's context length or --seq-len; pass --truncate to cut them, raise --seq-len if it is below the model's "
            "context length, or use a checkpoint with a longer context"
        )
    if verbose:
        unknown.note()
    if too_long and verbose:
        note(f"{too_long} of {len(records)} {name} texts were cut to {max_len} token{'s' if max_len != 1 else ''} (--truncate)")
    return Examples(examples, name, verbose, too_long,
                    {"records": len(records), "kept": len(examples), "blank": blank, "truncated": too_long})


def class_counts(examples: Sequence[ClassExample], labels: Labels) -> dict[str, int]:
    """How many of these examples each class has, in the labels' id order (zero counts kept)."""
    found = np.bincount([example.label for example in examples], minlength=len(labels.names)) if examples else [0] * len(labels.names)
    return {name: int(count) for name, count in zip(labels.names, found)}


class ClassifyBatches(ExampleBatches):
    """(inputs, attention_mask, labels, sample indices), right-padded."""

    def pad_width(self, indices: Sequence[int]) -> int:
        """The longest text among these samples (a batch of them is padded to it)."""
        return max(len(r.ids) for r in self.rows(indices))

    def tokens(self, indices: Sequence[int]) -> int:
        """The tokens of these samples, padding left out (what speed and tokens_seen count)."""
        return sum(len(r.ids) for r in self.rows(indices))

    def __call__(self, indices: Sequence[int], width: int | None = None):
        """Right-padded to `width` (default: the longest of these samples)."""
        indices = [int(k) for k in indices]
        rows = self.rows(indices)
        width = width or max(len(r.ids) for r in rows)
        x = torch.full((len(rows), width), self.pad_id, dtype=torch.long)
        mask = torch.zeros((len(rows), width), dtype=torch.long)
        for b, row in enumerate(rows):
            x[b, : len(row.ids)] = torch.tensor(row.ids, dtype=torch.long)
            mask[b, : len(row.ids)] = 1
        labels = torch.tensor([r.label for r in rows], dtype=torch.long)
        return x, mask, labels, torch.tensor(indices, dtype=torch.long)


def _picked(examples: Sequence, order: _EpochOrder | None, indices: Sequence[int]) -> list:
    """The examples at global sample indices: through the epoch's permutation, or in order, wrapping."""
    if order is None:
        return [examples[int(k) % len(examples)] for k in indices]
    return [examples[order(int(k))] for k in indices]


class _EpochOrder:
    """Global sample index -> example index through a seeded permutation per epoch."""

    def __init__(self, size: int, seed: int):
        self.size, self.seed = size, seed
        self._cache: dict[int, list[int]] = {}

    def __call__(self, k: int) -> int:
        epoch, offset = divmod(k, self.size)
        if epoch not in self._cache:
            if len(self._cache) > 4:
                self._cache.clear()
            g = torch.Generator().manual_seed((self.seed * 1_000_003 + epoch) % (2**63 - 1))
            self._cache[epoch] = torch.randperm(self.size, generator=g).tolist()
        return self._cache[epoch][offset]
