"""Preference records, read one way by every stage that reads them (finetune --task dpo trains on
them, eval -m preference scores a model on them): a prompt and two replies to it, the one preferred
(`chosen`) and the other (`rejected`), in the shapes TRL's DPOTrainer reads: `{"prompt", "chosen",
"rejected"}` as text, the prompt a conversation (`"prompt"` or `"messages"`, a list of messages
ending with the user's) and each reply text or `[{"role": "assistant", "content": ...}]`, or two
whole conversations that differ only in their last (assistant) message.

Each reply becomes the SFT record of the template in use, the reply where its response goes
(`sft_records`), and is encoded as that template encodes an SFT example, only the reply's own
tokens and the end of its turn learned (`encode_reply`).
"""

from __future__ import annotations

from typing import Any

from llmkit.data.templates import ROLES, Encoded, encode_example, plain_fields
from llmkit.errors import UserError
from llmkit.jsonl import json_kind

CHOSEN, REJECTED = "chosen", "rejected"


def _reply_text(value: Any, where: str, name: str) -> str:
    """A reply as text: text, or TRL's conversational form, one assistant message."""
    if isinstance(value, str):
        return value
    if (isinstance(value, list) and len(value) == 1 and isinstance(value[0], dict) and value[0].get("role") == "assistant"
            and isinstance(value[0].get("content"), str)):
        return value[0]["content"]
    raise UserError(f"{where} field {name!r} is {json_kind(value)}: a reply is text, or [{{\"role\": \"assistant\", "
                    "\"content\": text}]; fix the record")


def _messages(value: Any, where: str, name: str) -> list[dict[str, str]]:
    ok = isinstance(value, list) and value and all(
        isinstance(m, dict) and m.get("role") in ROLES and isinstance(m.get("content"), str) for m in value)
    if not ok:
        raise UserError(f"{where}: {name!r} must be a non-empty list of {{\"role\": system|user|assistant, \"content\": text}}")
    return value


def _chat_prompt_and_replies(record: dict[str, Any], where: str) -> tuple[list[dict[str, str]], str, str]:
    """The conversation the replies answer, and the two replies' texts."""
    chosen, rejected = record[CHOSEN], record[REJECTED]
    if record.get("messages") is not None and record.get("prompt") is not None:
        raise UserError(f"{where} has both 'prompt' and 'messages'; the replies answer one conversation: give one of the two")
    prompt = record.get("messages", record.get("prompt"))
    if prompt is None and isinstance(chosen, list) and isinstance(rejected, list):
        # TRL's implicit prompt: two whole conversations, the prompt being what they share
        chosen, rejected = _messages(chosen, where, CHOSEN), _messages(rejected, where, REJECTED)
        shared = 0
        while shared < min(len(chosen), len(rejected)) - 1 and chosen[shared] == rejected[shared]:
            shared += 1
        if len(chosen) != shared + 1 or len(rejected) != shared + 1:
            raise UserError(f"{where}: 'chosen' and 'rejected' are conversations that differ before their last message; "
                            "they must share every message but the last (the two replies), or give the shared part as 'prompt'")
        history, chosen, rejected = chosen[:shared], chosen[-1:], rejected[-1:]
    elif isinstance(prompt, str):
        history = [{"role": "user", "content": prompt}]
        system = record.get("system")
        if isinstance(system, str) and system:
            history.insert(0, {"role": "system", "content": system})
        elif system not in (None, ""):
            raise UserError(f"{where} field 'system' is {json_kind(system)}, not text; fix the record or leave it out")
    elif prompt is None:
        raise UserError(f"{where} has no prompt: give 'prompt' (text, or a list of messages) beside 'chosen' and "
                        "'rejected'")
    elif isinstance(prompt, list):
        history = _messages(prompt, where, "messages" if "messages" in record else "prompt")
    else:
        name = "messages" if "messages" in record else "prompt"
        raise UserError(f"{where} field {name!r} is {json_kind(prompt)}: the prompt is text, or a list of "
                        "{\"role\": system|user|assistant, \"content\": text}")
    if not history or history[-1]["role"] != "user":
        raise UserError(f"{where}: the prompt's last message must be the user's (the replies answer it)")
    return history, _reply_text(chosen, where, CHOSEN), _reply_text(rejected, where, REJECTED)


def sft_records(record: Any, template: dict[str, Any], where: str) -> tuple[dict[str, Any], dict[str, Any]]:
    """A preference record as the two SFT records of its replies: the chosen one, the rejected one."""
    if not isinstance(record, dict):
        raise UserError(f"{where} is {json_kind(record)}, not a record with 'prompt', 'chosen' and 'rejected'")
    missing = [name for name in (CHOSEN, REJECTED) if name not in record]
    if missing:
        raise UserError(f"{where} has no {' or '.join(map(repr, missing))} field: a preference pair is a prompt, the reply "
                        "preferred ('chosen') and the other ('rejected')")
    if template["type"] == "chat":
        if record.get("response") is not None:
            raise UserError(f"{where} has 'response' beside 'chosen' and 'rejected'; a preference pair's replies are those "
                            "two: leave 'response' out")
        history, chosen, rejected = _chat_prompt_and_replies(record, where)
        return tuple({"messages": [*history, {"role": "assistant", "content": reply}]} for reply in (chosen, rejected))
    fields = plain_fields(template["response"], "the template")
    if len(fields) != 1:
        raise UserError(f"a preference pair's reply goes where the template's response has its one field, and this "
                        f"template's response has {len(fields)} ({template['response']!r}); use a template whose response "
                        "is one field")
    target = fields[0]
    if record.get(target) is not None:
        raise UserError(f"{where} has {target!r} beside 'chosen' and 'rejected'; a preference pair's replies are those two, "
                        f"each read as the template's {target!r}: leave it out")
    rest = {key: value for key, value in record.items() if key not in (CHOSEN, REJECTED)}
    return tuple({**rest, target: _reply_text(record[name], where, name)} for name in (CHOSEN, REJECTED))


def last_reply_only(example: Encoded) -> Encoded:
    """Only the last learned span: the reply itself, not an earlier assistant turn of the prompt."""
    learn = list(example.learn)
    end = max((i for i, flag in enumerate(learn) if flag), default=-1)
    start = end
    while start > 0 and learn[start - 1]:
        start -= 1
    return Encoded(example.ids, [start <= i <= end for i in range(len(learn))], example.unlearned_turns)


def encode_reply(template: dict[str, Any], record: dict[str, Any], tokenizer, where: str) -> Encoded:
    """One reply's SFT record (of `sft_records`) encoded, only the reply itself learned."""
    return last_reply_only(encode_example(template, record, tokenizer, where, suggest_template=False))


def why_it_prefers_nothing(chosen: Encoded, rejected: Encoded, tokenizer) -> str | None:
    """"blank" where a reply is empty (or only whitespace), "same" where the two are one reply; else None.
    Such a pair prefers nothing: finetune leaves it out of training and validation, eval out of its scores."""
    specials = set(tokenizer.special_ids.values())
    for reply in (chosen, rejected):
        text = [t for t, learned in zip(reply.ids[1:], reply.learn[1:]) if learned and t not in specials]
        if not tokenizer.decode(text).strip():
            return "blank"
    return "same" if chosen.ids == rejected.ids else None
