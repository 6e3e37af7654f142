"""Prompts: from flags and files to token ids.

A prompt is plain text, or a chat (a list of {"role", "content"} messages). Plain text is
encoded as is, after the token documents start with in the checkpoint's training data
(`document_start_id`: `<|eos|>` for default pretraining shards, else `<|bos|>`). A chat is rendered with the special role tokens every llmkit
vocabulary has (`<|system|>`, `<|user|>`, `<|assistant|>`): each message is its role token
followed by its text, and the prompt ends with `<|assistant|>` so the model answers; a role
token starts the next turn, so generation stops at one. Role tokens are inserted by id, never
by typing them into text (the tokenizer encodes typed special-token names as ordinary text).
A fine-tuned checkpoint's task.json decides how plain prompts are framed: a text template
(`prompt_template`, e.g. "Translate:\n{source}\nTranslation:") has the prompt put in its
input field; a chat template makes the prompt a user message. `llmkit chat` builds on
`encode_chat`, the same rendering as the fine-tuning stage's and the exported HF chat template.

Prompt files: `.txt`, one prompt per line (`\\n` in a line becomes a newline, see `unescape`), or
JSONL with a "prompt" (or "text") field, or a "messages" list for chats.
"""

from __future__ import annotations

import re
import string
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Sequence

from llmkit.errors import UserError
from llmkit.jsonl import iter_jsonl

ROLES = ("system", "user", "assistant")


@dataclass
class Prompt:
    text: str | None = None
    messages: list[dict[str, str]] | None = None
    meta: dict[str, Any] = field(default_factory=dict)  # other JSONL fields, copied to the output

    @property
    def display(self) -> str:
        if self.messages is None:
            return self.text or ""
        return "\n".join(f"{m['role']}: {m['content']}" for m in self.messages)


_ESCAPES = {"n": "\n", "t": "\t", "\\": "\\"}


def unescape(text: str) -> str:
    """`\\n`, `\\t` and `\\\\` typed on a command line (where a shell passes them literally) become
    a newline, a tab and a backslash; any other backslash is kept as it is."""
    return re.sub(r"\\([nt\\])", lambda m: _ESCAPES[m.group(1)], text)


def read_prompt_file(path: Path) -> list[Prompt]:
    path = Path(path)
    if not path.is_file():
        raise UserError(f"prompts file not found: {path}; pass a .txt (one prompt per line) or .jsonl file")
    if path.suffix.lower() not in (".jsonl", ".json", ".ndjson"):
        lines = path.read_text(encoding="utf-8").splitlines()
        prompts = [Prompt(text=unescape(line)) for line in lines if line.strip()]
    else:
        prompts = [_prompt_from_record(record, f"{path}:{lineno}") for lineno, record in iter_jsonl(path)]
    if not prompts:
        raise UserError(f"{path} holds no prompts")
    return prompts


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
        return Prompt(messages=messages, meta={k: v for k, v in record.items() if k != "messages"})
    for key in ("prompt", "text"):
        if isinstance(record.get(key), str):
            return Prompt(text=record[key], meta={k: v for k, v in record.items() if k != key})
    raise UserError(f"{where} has no \"prompt\" (or \"text\") string and no \"messages\" list")


def is_chat_checkpoint(task: dict | None) -> bool:
    """Fine-tuned with the chat template: plain prompts become a user message."""
    return ((task or {}).get("template") or {}).get("type") == "chat"


def apply_template(text: str, task: dict | None) -> str:
    """Wrap a prompt in a fine-tuned checkpoint's prompt template (task.json `prompt_template`).

    The text fills the template's input field (`template.input_field`, else its first
    placeholder: `{prompt}`, `{source}`, `{document}`...); other placeholders are left empty,
    as the fine-tuning stage renders generation prompts.
    """
    template = (task or {}).get("prompt_template")
    if not template:
        return text
    try:
        fields = [name for _, name, _, _ in string.Formatter().parse(template) if name]
    except ValueError as exc:
        raise UserError(f"the checkpoint's task.json prompt_template is not a valid template ({exc}); fix task.json") from exc
    if not fields:
        return template + text
    input_field = ((task or {}).get("template") or {}).get("input_field") or fields[0]
    values = {name: "" for name in fields}
    values[input_field] = text
    return template.format_map(values)


def encode_chat(messages: Sequence[dict[str, str]], tokenizer) -> list[int]:
    """[BOS] (<|role|> text)* <|assistant|>: the model continues as the assistant."""
    special = tokenizer.special_ids
    missing = [f"<|{r}|>" for r in ROLES if f"<|{r}|>" not in special]
    if missing:
        raise UserError(f"this checkpoint's tokenizer has no {', '.join(missing)} token(s); chat prompts need them")
    ids = [tokenizer.bos_id]
    for message in messages:
        ids.append(special[f"<|{message['role']}|>"])
        ids.extend(tokenizer.encode(message["content"]))
    ids.append(special["<|assistant|>"])
    return ids


def chat_stop_ids(tokenizer) -> list[int]:
    """Role tokens end an assistant turn."""
    return [tokenizer.special_ids[f"<|{r}|>"] for r in ROLES if f"<|{r}|>" in tokenizer.special_ids]


def document_start_id(tokenizer, artifact=None, task: dict | None = None) -> int:
    """The token a document follows in this checkpoint's training data.

    `llmkit tokenize` stores documents as `text <|eos|>` by default (`--add-bos` prepends
    `<|bos|>`), so a model pretrained on the default shards has seen every document start right
    after `<|eos|>` and never seen `<|bos|>`; lm-evaluation-harness likewise conditions the first
    token on EOT. Fine-tuned checkpoints (with task.json) are trained with `<|bos|>` first, and
    imported checkpoints use their own BOS. The checkpoint's lineage (its tokens input, through
    any checkpoint inputs) tells which; when it cannot be found, `<|bos|>`.
    """
    if task is not None or artifact is None:
        return tokenizer.bos_id
    from llmkit.errors import UserError

    current, seen = artifact, 0
    while current is not None and seen < 8:
        seen += 1
        refs = {ref["kind"]: ref["role"] for ref in current.manifest.inputs if "kind" in ref}
        try:
            if "tokens" in refs:
                tokens = current.input(refs["tokens"])
                return tokenizer.bos_id if tokens.stats.get("add_bos", True) else tokenizer.eos_id
            current = current.input(refs["checkpoint"]) if "checkpoint" in refs else None
        except UserError:  # moved or rebuilt since: no way to tell
            return tokenizer.bos_id
    return tokenizer.bos_id


def encode_prompt(prompt: Prompt, tokenizer, task: dict | None = None, start_id: int | None = None) -> list[int]:
    """Token ids of a prompt: the document-start token, then the (templated) text; or a chat."""
    if prompt.messages is not None:
        return encode_chat(prompt.messages, tokenizer)
    if is_chat_checkpoint(task):
        return encode_chat([{"role": "user", "content": prompt.text or ""}], tokenizer)
    text = apply_template(prompt.text or "", task)
    ids = tokenizer.encode(text) if text else []
    return [tokenizer.bos_id if start_id is None else start_id] + ids
