"""Prompts: from flags and files to token ids.

A prompt is plain text, or a chat (a list of {"role", "content"} messages). Plain text is
encoded as is, after the token documents start with in the checkpoint's training data
(`document_start_id`: `<|eos|>` for default pretraining shards, else `<|bos|>`). A chat is
rendered with the special role tokens every llmkit vocabulary has (`<|system|>`, `<|user|>`, `<|assistant|>`): each message is its role token
followed by its text, and the prompt ends with `<|assistant|>` so the model answers; a role
token starts the next turn, so generation stops at one. Role tokens are inserted by id, never
by typing them into text (the tokenizer encodes typed special-token names as ordinary text).
A fine-tuned checkpoint's task.json (llmkit.model.records.TaskRecord) decides how plain prompts
are framed: a text template (e.g. "Translate:\n{source}\nTranslation:") has the prompt put in
its input field; a chat template makes the prompt a user message. Both render through
llmkit.data.templates, the fine-tuning stage's own renderer, which the exported HF chat
template is tested against.

Prompt files: `.txt`, one prompt per line (`\\n` in a line becomes a newline, see `unescape`), or
JSONL with a "prompt" (or "text") field, or a "messages" list for chats; CSV and Parquet records as
JSONL's (`llmkit.table_records`, as eval and finetune read them).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from llmkit.data.templates import (ROLES, encode_chat_prompt, encode_rendered, encode_text_prompt, fit_conversation, fit_fields,
                                   plain_fields, prompt_fields, render, text_fields)
from llmkit.errors import UserError
from llmkit.jsonl import ABSENT, field_value, iter_jsonl, read_text
from llmkit.options import unescape
from llmkit.table_records import is_table, read_table_records



# Fields a JSONL prompt may be in, first found first (as `llmkit eval` reads model inputs).
PROMPT_FIELDS = ("prompt", "text", "input", "instruction", "question", "source", "document")


@dataclass
class Prompt:
    text: str | None = None
    messages: list[dict[str, str]] | None = None
    meta: dict[str, Any] = field(default_factory=dict)  # other JSONL fields, copied to the output
    record: dict[str, Any] | None = None  # the whole JSONL record: fills every field of a text template
    unread: str | None = None  # a record with no prompt field: the error, unless a fine-tune's template reads it

    @property
    def display(self) -> str:
        if self.messages is None:
            return self.text or ""
        # (each message's text stripped on the screen, as chat shows a reply: a transcript keeps the whitespace;
        # text of several lines keeps its first line's indentation, as code has it)
        return "\n".join(f"{m['role']}: {_shown(str(m['content']))}" for m in self.messages)


def _shown(text: str) -> str:
    return text.strip() if "\n" not in text.strip() else text.lstrip("\n").rstrip()


def read_prompt_file(path: Path) -> list[Prompt]:
    path = Path("/dev/stdin") if str(path) == "-" else Path(path)  # (`-`: the shell's convention, read as /dev/stdin is)
    # (not is_file(): a pipe, `/dev/stdin` or `<(command)`, is read as the text file it streams)
    if not path.exists():
        raise UserError(f"prompts file not found: {path}; pass a .txt (one prompt per line) or .jsonl file")
    if path.is_dir():
        raise UserError(f"--prompts {path} is a folder; pass a .txt (one prompt per line) or .jsonl file")
    if is_table(path):  # (a CSV's every line was a prompt, its header the first: as eval and finetune read it, records)
        records = read_table_records(path, f"--prompts {path}")
        prompts = [_prompt_from_record(record, f"{path} record {number}") for number, record in enumerate(records, start=1)]
    elif path.suffix.lower() not in (".jsonl", ".json", ".ndjson"):
        lines = text_file_lines(read_text(path))
        shown = "standard input" if path == Path("/dev/stdin") else str(path)
        records = _json_lines(lines, shown) if path.suffix.lower() != ".txt" else None
        if records is not None:  # (`jq ... | llmkit generate --prompts -`: completions of the JSON text, before)
            from llmkit.console import note

            note(f"{shown} is read as JSONL: every line is a JSON object (a .txt file's lines are prompts as written)")
            prompts = [_prompt_from_record(record, f"{shown}:{lineno}") for lineno, record in records]
            for prompt in prompts:  # (JSON text to complete, as it was before 2026-12-07: a .txt file says so)
                if prompt.unread:
                    prompt.unread += "; to complete each line as text instead, give the lines as a .txt file"
        else:
            prompts = [Prompt(text=unescape(line)) for line in lines if line.strip()]
    else:
        prompts = [_prompt_from_record(record, f"{path}:{lineno}") for lineno, record in iter_jsonl(path)]
    if not prompts:
        shown = "standard input" if path == Path("/dev/stdin") else str(path)
        raise UserError(f"{shown} holds no prompt; write one per line (.txt, or on standard input), or one record per line (.jsonl)")
    return prompts


def _json_lines(lines: list[str], shown: str) -> list[tuple[int, dict]] | None:
    """(line number, record) of lines that are all JSON objects (blank ones aside), else None: a
    stream with no suffix to say its format (a pipe, `-`), read as what it holds. Mostly JSON
    objects with one that opens as one and is not (a record cut short, which read the whole input
    as text lines before) is an error naming it; text lines among JSON ones are text."""
    import json

    records, other, first_cut = [], 0, None
    for lineno, line in enumerate(lines, start=1):
        if not line.strip():
            continue
        opens = line.lstrip().startswith("{")
        try:
            record = json.loads(line) if opens else None
        except ValueError:
            record = None
        if isinstance(record, dict):
            records.append((lineno, record))
            continue
        other += 1
        if opens and first_cut is None:  # (a record cut short, or broken: not a line of text)
            first_cut = lineno
    if not records:
        return None
    if other and first_cut is not None and len(records) > other:
        raise UserError(f"{shown}:{first_cut} is not a JSON object, while {len(records)} of its lines "
                        f"{'is one' if len(records) == 1 else 'are'}: fix that line to read them as JSONL records, or "
                        "give the lines as a .txt file to complete each as text")
    return records if not other else None


def text_file_lines(text: str) -> list[str]:
    """A .txt prompt file's lines: split at newlines only (str.splitlines also splits at a form
    feed, a vertical tab and Unicode's line separators, which a prompt may hold), a Windows line
    end not being part of any prompt (nor is a byte-order mark: llmkit.jsonl.read_text drops it)."""
    return [line.removesuffix("\r") for line in text.split("\n")]


def _prompt_from_record(record: Any, where: str) -> Prompt:
    if not isinstance(record, dict):
        raise UserError(f"{where} is not a JSON object; write {{\"prompt\": \"...\"}} per line")
    if "messages" in record:
        messages = record["messages"]
        ok = isinstance(messages, list) and all(
            isinstance(m, dict) and m.get("role") in ROLES and isinstance(m.get("content"), str) for m in messages
        )
        if not ok or not messages:
            raise UserError(f"{where}: 'messages' must be a list of {{\"role\": system|user|assistant, \"content\": text}}")
        meta = {k: v for k, v in record.items() if k != "messages"}
        if messages[-1]["role"] == "assistant":
            # A conversation that ends with a reply (finetune's data, a `chat -o` transcript): that reply is made
            # again, as eval scores it, and kept beside the new one; a second reply in a row is no turn chat trains.
            if not any(m["role"] == "user" for m in messages[:-1]):
                raise UserError(f"{where}: its messages hold no user message before the assistant's reply; add the question")
            messages, meta = messages[:-1], {"reference": messages[-1]["content"], **meta}  # (a record's own stays)
        return Prompt(messages=messages, meta=meta)
    if isinstance(record.get("instruction"), str) and isinstance(record.get("input"), str) and "prompt" not in record:
        # Alpaca-style: the instruction, then its input
        text = record["instruction"] + ("\n\n" + record["input"] if record["input"] else "")
        return Prompt(text=text, meta={k: v for k, v in record.items() if k not in ("instruction", "input")}, record=record)
    for key in PROMPT_FIELDS:
        if isinstance(record.get(key), str):
            return Prompt(text=record[key], meta={k: v for k, v in record.items() if k != key}, record=record)
    # (a fine-tune's own fields, {"de": ...} for a template "German: {de}", are read once its template is known)
    return Prompt(meta=dict(record), record=record,
                  unread=f"{where} has no prompt: a string in one of {', '.join(PROMPT_FIELDS)}, or a \"messages\" list")


def read_template_records(prompts: list[Prompt], task) -> None:
    """Records without a prompt field are read by the fine-tune's text template when they hold its
    fields (its own training data's shape): the input field is the prompt. Any other is refused."""
    template = task.text_template if task is not None and not task.is_chat else None
    for prompt in prompts:
        if prompt.unread is None:
            continue
        fields = plain_fields(template["prompt"], "the checkpoint's template") if template is not None else []
        text = field_value(prompt.record, template["input_field"]) if template is not None else ABSENT
        if not isinstance(text, str) or any(field_value(prompt.record, name) is ABSENT for name in fields):
            hint = f" (or the fields of this fine-tune's template: {', '.join(fields)})" if fields else ""
            raise UserError(prompt.unread + hint)
        prompt.text, prompt.unread = text, None
        prompt.meta = _without(prompt.record, template["input_field"])  # (the prompt is shown once, as `prompt`)


def _without(record: dict[str, Any], name: str) -> dict[str, Any]:
    """The record without the field `name` (its own key, else `a.b` within its object a, that object
    left out where nothing else is in it), the rest as it is: what an output record copies beside the prompt."""
    if name in record or "." not in name:
        return {k: v for k, v in record.items() if k != name}
    head, _, rest = name.partition(".")
    kept = dict(record)
    if isinstance(record.get(head), dict):
        kept[head] = _without(record[head], rest)
        if not kept[head]:
            del kept[head]
    return kept


def chat_turns(record: dict[str, Any], text: str) -> list[dict[str, str]]:
    """The messages a chat fine-tune is prompted with for one record's text: the user's message,
    after the record's "system" message when it has one (finetune trains on such records so)."""
    system = record.get("system")
    return ([{"role": "system", "content": system}] if isinstance(system, str) else []) + [{"role": "user", "content": text}]


def chat_stop_ids(tokenizer) -> list[int]:
    """The tokens that end a reply besides the end-of-text (and end-of-turn) tokens, which --ignore-eos
    lets pass: every other special token. A role token starts the next turn; the start, padding and
    mask tokens have no place inside a reply, and decoded they would be their literal names. chat,
    generate and eval stop a chat model's reply at the same tokens."""
    # (an <unk> marked special stands for text the model did see: it ends no reply)
    return sorted(set(tokenizer.special_ids.values()) - set(tokenizer.end_ids) - {tokenizer.unknown_text_id})


def text_stop_ids(tokenizer, start_id: int, *, past_eos: bool) -> list[int]:
    """What ends a text's completion (a base model's, a text-template fine-tune's) besides the
    end-of-text tokens: every special token, as in a chat (chat_stop_ids), but past the end of a text
    (--ignore-eos) the document start, which follows a document's end in the shards a base model
    learned from. A base model that sampled `<|pad|>` or a role token (never in its training text)
    wrote its literal name into the completion, which a later stage read back as text."""
    return [i for i in chat_stop_ids(tokenizer) if not (past_eos and i == start_id)]


def document_start_id(tokenizer, artifact=None, task=None) -> int:
    """The token a document follows in this checkpoint's training data.

    `llmkit tokenize` stores documents as `text <|eos|>` by default (`--add-bos` prepends
    `<|bos|>`), so a model pretrained on the default shards has seen every document start right
    after `<|eos|>` and never seen `<|bos|>`; lm-evaluation-harness likewise conditions the first
    token on EOT. Fine-tuned checkpoints (with task.json) are trained with `<|bos|>` first, and
    imported checkpoints use their own BOS. When it is not known (`traced_document_start`),
    `<|bos|>`.
    """
    if task is not None or artifact is None:
        return tokenizer.bos_id
    return tokenizer.eos_id if traced_document_start(artifact) == "eos" else tokenizer.bos_id


def refuse_different_document_starts(starts: dict[str, list[str]], combined: str) -> None:
    """Checkpoints combined (`combined`: "average", "ensemble") must have seen documents start after
    one token: `starts` maps each token (its text) to the checkpoints that did."""
    if len(starts) > 1:
        said = "; ".join(f"{', '.join(paths)} after {token}" for token, paths in starts.items())
        raise UserError(f"the checkpoints were pretrained with documents starting after different tokens ({said}); {combined} "
                        "checkpoints pretrained on the same kind of shards (llmkit tokenize with or without --add-bos)")


def traced_document_start(artifact) -> str | None:
    """"bos" or "eos" as a checkpoint records it (config `document_start`, hashed, carried through
    average, export and import); for one written before it did, traced through its lineage (its
    tokens input, through any checkpoint inputs); None when that cannot be found."""
    from llmkit.model.records import recorded_document_start

    current, seen = artifact, 0
    while current is not None and seen < 8:
        seen += 1
        recorded = recorded_document_start(current)
        if recorded is not None:
            return recorded
        refs = {ref["kind"]: ref["role"] for ref in current.manifest.inputs if "kind" in ref}
        try:
            if "tokens" in refs:
                from llmkit.data.shards import document_start

                return document_start(current.input(refs["tokens"]))
            current = current.input(refs["checkpoint"]) if "checkpoint" in refs else None
        except UserError:  # moved or rebuilt since: no way to tell
            return None
    return None


def _template_input(prompt: Prompt, template: dict, tokenizer):
    """(the record that fills a text template, its encoder, the fields that may be cut): a prompt
    record with every field the template names fills them all; else the prompt's text is the
    template's input field."""
    fields = plain_fields(template["prompt"], "the checkpoint's template")
    if prompt.record is not None and all(field_value(prompt.record, name) is not ABSENT for name in fields):
        return (prompt.record, lambda r: [tokenizer.bos_id] + encode_rendered(render(template["prompt"], r, "prompt record"), tokenizer),
                prompt_fields(template))
    field = template["input_field"]
    return {field: prompt.text or ""}, lambda r: encode_text_prompt(template, r[field], tokenizer), [field]


def fit_prompt(prompt: Prompt, tokenizer, task, budget: int) -> list[int] | None:
    """A prompt cut to `budget` tokens as training and eval cut one: a conversation loses its oldest
    exchanges (the system message and the last message stay, as in chat and eval), a text-template
    checkpoint's input its end, keeping the template's wording (as finetune --truncate). None for a
    plain prompt: the window cuts it. A conversation still too long loses the end of its last
    message, as chat cuts a long message. Where even that leaves no room (a long system message, a
    template's wording), a UserError, as chat and eval refuse it: the window would cut the start
    token and the system message or the instruction off."""
    if prompt.messages is not None or (task is not None and task.is_chat):
        messages = prompt.messages if prompt.messages is not None else chat_turns(prompt.record or {}, prompt.text or "")
        fitted, dropped, cut = fit_conversation(messages, tokenizer, budget)
        if cut is None:
            wording = len(encode_chat_prompt([*fitted[:-1], dict(fitted[-1], content="")], tokenizer))
            raise UserError(f"the conversation takes {wording} tokens with its last message empty (its system message and "
                            f"wording), more than the {budget} the context leaves beside the reply; shorten it or lower "
                            "--max-new-tokens")
        return encode_chat_prompt(fitted, tokenizer)
    template = task.text_template if task is not None else None
    if template is None:
        return None
    record, encode, fields = _template_input(prompt, template, tokenizer)
    texts = text_fields(record, fields)
    if not texts:  # numbers are not cut (the window decides)
        return None
    shorter = fit_fields(encode, record, texts, tokenizer, budget)  # the longest text first, as finetune --truncate
    if shorter is None:
        wording = len(encode(dict(record, **dict.fromkeys(texts, ""))))
        raise UserError(f"the template's wording alone takes {wording} tokens, more than the {budget} the context leaves "
                        "beside the reply; lower --max-new-tokens")
    return encode(shorter)


def encode_prompt(prompt: Prompt, tokenizer, task=None, start_id: int | None = None) -> list[int]:
    """Token ids of a prompt: a chat; the text in the fine-tuned checkpoint's template (a
    TaskRecord's); or the document-start token, then the text."""
    if prompt.messages is not None:
        return encode_chat_prompt(prompt.messages, tokenizer)
    if task is not None and task.is_chat:
        return encode_chat_prompt(chat_turns(prompt.record or {}, prompt.text or ""), tokenizer)
    template = task.text_template if task is not None else None
    if template is not None:
        record, encode, _ = _template_input(prompt, template, tokenizer)
        return encode(record)
    ids = tokenizer.encode(prompt.text) if prompt.text else []
    return [tokenizer.bos_id if start_id is None else start_id] + ids
