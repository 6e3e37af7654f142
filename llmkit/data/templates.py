"""Prompt templates: how a training record becomes tokens, and which of them are learned.

Two kinds, both stored in the checkpoint's task.json under "template" so that `generate`,
`eval` and `chat` render prompts exactly as training did (the format is in docs/finetune.md):

  chat   [BOS] (<|role|> content)* ... the special role tokens of the vocabulary, inserted by id.
         Assistant content is learned, followed by the token that ends the turn: the next
         message's role token, or EOS after the last message. A generation prompt is the history
         followed by <|assistant|> (`encode_chat_prompt`, which generate, eval and chat use).
  text   [BOS] prompt(record) response(record) [EOS] ({field}s filled, `render`), with only the response
         and the EOS learned. Built in: plain ({prompt} -> {response}), translate ({source} ->
         {target}), summarize ({document} -> {summary}); or a JSON file with the same keys.

Prompt and response are encoded separately and concatenated, because at generation time the
prompt is encoded on its own: training sees the same prompt tokens the model will be given.
"""

from __future__ import annotations

import json
import re
import string
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable, Sequence

from llmkit.errors import UsageError, UserError, did_you_mean
from llmkit.jsonl import ABSENT, field_value, read_text

ROLES = ("system", "user", "assistant")
CHAT = "chat"
# Fine-tuned checkpoints carry their prompt format in task.json (this module);
# as a Jinja chat template, `tokenizer.apply_chat_template` renders what llmkit renders.
# chat: [BOS] (<|role|> text)*, then <|assistant|> to prompt an answer, or EOS after a finished
# conversation (as in training); a role token ends a turn, so role tokens are stop ids too. What
# training learns, an assistant's text and the token that ends its turn (the next role token, or EOS
# last), is inside {% generation %}: transformers' return_assistant_tokens_mask (TRL's
# assistant_only_loss) then gives llmkit's loss mask (without it, a mask of zeros).
CHAT_TEMPLATE = (
    "{{ bos_token }}{% for message in messages %}"
    "{% if message['role'] not in ['system', 'user', 'assistant'] %}"
    "{{ raise_exception('llmkit chats have system, user and assistant roles only') }}{% endif %}"
    "{% if loop.first or messages[loop.index0 - 1]['role'] != 'assistant' %}{{ '<|' + message['role'] + '|>' }}{% endif %}"
    "{% if message['role'] == 'assistant' %}{% generation %}{{ message['content'] }}"
    "{% if not loop.last %}{{ '<|' + messages[loop.index0 + 1]['role'] + '|>' }}"
    "{% elif not add_generation_prompt %}{{ eos_token }}{% endif %}{% endgeneration %}"
    "{% else %}{{ message['content'] }}{% endif %}{% endfor %}"
    "{% if add_generation_prompt %}{{ '<|assistant|>' }}{% endif %}"
)
# Every form of it llmkit has exported (until 2026-12-06 without the {% generation %} marks): a chat
# fine-tune exported then, and imported again without llmkit's record, is llmkit's chat format too.
LLMKIT_CHAT_TEMPLATES = (
    CHAT_TEMPLATE,
    "{{ bos_token }}{% for message in messages %}"
    "{% if message['role'] not in ['system', 'user', 'assistant'] %}"
    "{{ raise_exception('llmkit chats have system, user and assistant roles only') }}{% endif %}"
    "{{ '<|' + message['role'] + '|>' + message['content'] }}{% endfor %}"
    "{% if add_generation_prompt %}{{ '<|assistant|>' }}"
    "{% elif messages and messages[-1]['role'] == 'assistant' %}{{ eos_token }}{% endif %}",
)
_GENERATION_MARK = re.compile(r"\{%-?\s*generation\s*-?%\}")  # ({% generation %}, {%- generation -%})

TEXT_TEMPLATES: dict[str, dict[str, str]] = {
    "plain": {"prompt": "{prompt}\n", "response": "{response}"},
    "translate": {"prompt": "Translate:\n{source}\nTranslation:", "response": " {target}"},
    "summarize": {"prompt": "Summarize:\n{document}\nSummary:", "response": " {summary}"},
}
BUILTIN = (CHAT, *TEXT_TEMPLATES)


@dataclass
class Encoded:
    """One example: token ids and, per token, whether the model learns to produce it."""

    ids: list[int]
    learn: list[bool]
    # assistant turns left unlearned: a model's own chat template that renders an earlier turn otherwise
    # than as the history it answers (Qwen3's drops an earlier turn's <think> block)
    unlearned_turns: int = 0

    @property
    def prompt_length(self) -> int:
        """Tokens before the first learned one."""
        return next((i for i, flag in enumerate(self.learn) if flag), len(self.ids))


def _fields(template: str) -> list[str]:
    return [name for _, name, _, _ in string.Formatter().parse(template) if name]


def is_field_name(name: str) -> bool:
    """A placeholder's name: a field, or fields joined by dots reaching into nested objects
    (`{translation.de}`, as the hub's translation sets hold their pairs)."""
    return all(part.isidentifier() for part in name.split("."))


def plain_fields(template: str, what: str) -> list[str]:
    """The placeholders of a template, which must be plain `{name}`s or `{name.nested}`s (looked up
    in the record's objects, never as Python attributes): no index access, conversion or format
    spec, which would run code on the data."""
    try:
        parts = list(string.Formatter().parse(template))
    except ValueError as exc:
        raise UserError(f"{what} {template!r} is not a valid template ({exc}); use {{field}} placeholders") from exc
    names = []
    for _, name, spec, conversion in parts:
        if name is None:
            continue
        if not is_field_name(name) or spec or conversion:
            shown = "{" + name + (f"!{conversion}" if conversion else "") + (f":{spec}" if spec else "") + "}"
            raise UserError(f"{what} {template!r} has the placeholder {shown}; only {{field}} names are allowed "
                            "({field.subfield} for a nested one)")
        names.append(name)
    return names


def text_template(name: str, prompt: str, response: str) -> dict[str, Any]:
    for part, text in (("prompt", prompt), ("response", response)):
        if not isinstance(text, str) or not plain_fields(text, f"template {name!r} {part}"):
            raise UserError(f"template {name!r}: '{part}' must be a string with at least one {{field}} placeholder")
    inputs = _fields(prompt)
    return {
        "name": name,
        "type": "text",
        "prompt": prompt,
        "response": response,
        "input_field": inputs[0],
        "target_field": _fields(response)[0],
        "bos": "<|bos|>",
        "eos": "<|eos|>",
    }


def chat_template() -> dict[str, Any]:
    return {
        "name": CHAT,
        "type": "chat",
        "bos": "<|bos|>",
        "roles": {role: f"<|{role}|>" for role in ROLES},
        "generation_prompt": "<|assistant|>",
        "assistant_end": "next role token, or <|eos|> after the last message",
    }


def own_chat_format(jinja: str) -> dict[str, Any]:
    """`--template chat` for a model with its own chat template (an import's chat_template.jinja): its
    conversations are rendered with that template, in training (`encode_own_chat_example`) as at
    inference; task.json keeps the template, so the fine-tune is prompted in the format it learned."""
    return {"name": CHAT, "type": "chat", "jinja": jinja,
            "assistant_end": "the template's own end of an assistant turn, learned with the turn"}


def chat_format_for(tokenizer) -> dict[str, Any]:
    """What `--template chat` trains in with this tokenizer: an imported chat model's own template,
    else llmkit's chat format (which is also the template of llmkit's own chat fine-tune, exported and
    imported again without its record: trained as before, its turns' ends llmkit's)."""
    own = getattr(tokenizer, "own_chat_template", None)
    return own_chat_format(own) if own and own not in LLMKIT_CHAT_TEMPLATES else chat_template()


def resolve_template(spec: str) -> dict[str, Any]:
    """A built-in name or a JSON file {"prompt": "...{field}...", "response": "...{field}..."}."""
    if spec == CHAT:
        return chat_template()
    if spec in TEXT_TEMPLATES:
        return text_template(spec, **TEXT_TEMPLATES[spec])
    path = Path(spec)
    if not path.is_file():
        if path.suffix.lower() == ".json":
            raise UsageError(f"template file not found: {spec}; check the path, or choose one of {', '.join(BUILTIN)}")
        raise UsageError(f"unknown template {spec!r}; {did_you_mean(spec, BUILTIN)}choose one of {', '.join(BUILTIN)} or pass "
                         "a JSON file")
    try:
        return _template_file(path)
    except UsageError:
        raise
    except UserError as exc:  # (a bad --template value, as an unknown name is: exit 2 for both)
        raise UsageError(str(exc)) from exc


def _template_file(path: Path) -> dict[str, Any]:
    try:
        data = json.loads(read_text(path))
    except json.JSONDecodeError as exc:
        raise UserError(f"template file {path} is not valid JSON ({exc.msg}); write {{\"prompt\": ..., \"response\": ...}}") from exc
    if not isinstance(data, dict) or set(data) - {"prompt", "response", "name"} or not {"prompt", "response"} <= set(data):
        raise UserError(f"template file {path} must hold exactly {{\"prompt\": \"...{{field}}...\", \"response\": \"...{{field}}...\"}}")
    return text_template(str(data.get("name", path.stem)), data["prompt"], data["response"])


def check_tokenizer(template: dict[str, Any], tokenizer,
                    fix: str = "pass --template plain (or translate, summarize, or a JSON template file, whose wording may "
                               "name this tokenizer's own special tokens)") -> None:
    """The chat template's role tokens are in the tokenizer; else an error ending in `fix` (the
    caller's way out: finetune's is another template, chat's is another command)."""
    if template["type"] == "chat" and "jinja" not in template:
        missing = [tok for tok in template["roles"].values() if tok not in tokenizer.special_ids]
        if missing:
            raise UserError(
                f"the chat template needs the special token(s) {', '.join(missing)}, which this checkpoint's tokenizer lacks; {fix}"
            )


# -- chat --------------------------------------------------------------------------------------


def record_messages(record: dict[str, Any], where: str, suggest_template: bool = True) -> list[dict[str, str]]:
    """A record's conversation: its "messages", or a {"prompt", "response"} pair as one exchange.
    `suggest_template`: a record of other fields names the --template they fit (fine-tuning's option)."""
    if "messages" in record:
        messages = record["messages"]
        ok = isinstance(messages, list) and messages and all(
            isinstance(m, dict) and m.get("role") in ROLES and isinstance(m.get("content"), str) for m in messages
        )
        if not ok:
            raise UserError(f"{where}: 'messages' must be a non-empty list of {{\"role\": system|user|assistant, \"content\": text}}")
        if messages[-1]["role"] != "assistant":
            raise UserError(f"{where}: the last message must be the assistant's (the reply to learn)")
        if record.get("system") not in (None, ""):  # (beside "messages" it was dropped without a word; an empty one says nothing)
            raise UserError(f"{where} has a 'system' field beside 'messages'; put the system message first in 'messages'")
        # An exchange beside the conversation was trained on 'messages' alone without a word; the same text
        # repeated there (UltraChat's and no_robots' "prompt": the first user message) is no other exchange.
        said = {"prompt": next((m["content"] for m in messages if m["role"] == "user"), None),
                "response": messages[-1]["content"]}
        beside = [name for name in ("prompt", "response") if record.get(name) not in (None, "", said[name])]
        if beside:
            raise UserError(f"{where} has {' and '.join(repr(name) for name in beside)} beside 'messages', which holds the "
                            f"whole conversation, and {'they differ' if len(beside) > 1 else 'it differs'} from its "
                            f"{'first user message' if beside == ['prompt'] else 'messages'}; put that exchange in "
                            "'messages', or give one record each")
        return messages
    if isinstance(record.get("prompt"), str) and isinstance(record.get("response"), str):
        messages = [{"role": "user", "content": record["prompt"]}, {"role": "assistant", "content": record["response"]}]
        if isinstance(record.get("system"), str):
            messages.insert(0, {"role": "system", "content": record["system"]})
        elif record.get("system") is not None:  # (a number or a list was left out without a word)
            from llmkit.jsonl import json_kind

            raise UserError(f"{where} field 'system' is {json_kind(record['system'])}, not text; fix the record or leave it out")
        return messages
    # the fields are there and one holds no text (null, a list): no template would take it (a number, --template plain)
    bad = next((name for name in ("prompt", "response") if name in record and _not_text(record[name])), None)
    if bad and {"prompt", "response"} <= set(record):
        raise UserError(f"{where} field {bad!r} is {_not_text(record[bad])}, not text; fix the record or leave it out")
    raise UserError(f"{where} has neither a \"messages\" list nor \"prompt\" and \"response\" strings"
                    f"{_template_for(record) if suggest_template else ''}")


def _template_for(record: dict[str, Any], instead_of: str | None = None) -> str:
    """What to fine-tune a record of these fields with, said after an error: a built-in text template
    its fields fit (other than `instead_of`), --task classify for a text and its label, or a file."""
    fits = [name for name, spec in TEXT_TEMPLATES.items()
            if name != instead_of and {f for part in spec.values() for f in plain_fields(part, name)} <= set(record)]
    from llmkit.model.records import CLASSIFY_TEXT_FIELDS

    classify = "label" in record and any(name in record for name in CLASSIFY_TEXT_FIELDS)  # (pretrain's next: names no task)
    return ("; a text and its label: fine-tune a classifier with --task classify" if classify and not fits
            else f"; its fields fit --template {fits[0]}" if fits
            else "; for other fields give --template FILE.json (a prompt and a response with {field} slots)")


def encode_chat_example(messages: Sequence[dict[str, str]], tokenizer, own: bool = False,
                        where: str = "a conversation") -> Encoded:
    """A conversation to train on: llmkit's chat format, or (`own`: `own_chat_format`) the model's own
    chat template (an imported chat model's: `encode_own_chat_example`), the format it is prompted in."""
    if own:
        return encode_own_chat_example(messages, tokenizer, where)
    special = tokenizer.special_ids
    roles = [special[f"<|{m['role']}|>"] for m in messages]
    ids, learn = [tokenizer.bos_id], [False]
    for i, message in enumerate(messages):
        ids.append(roles[i])
        # The role token ends the previous turn: learned when that turn was the assistant's.
        learn.append(i > 0 and messages[i - 1]["role"] == "assistant")
        content = message_ids(message["content"], roles[i], roles[i + 1] if i + 1 < len(messages) else tokenizer.eos_id,
                              tokenizer)
        ids.extend(content)
        learn.extend([message["role"] == "assistant"] * len(content))
    ids.append(tokenizer.eos_id)
    learn.append(messages[-1]["role"] == "assistant")
    return Encoded(ids, learn)


def own_assistant_turns(messages: Sequence[dict[str, str]], tokenizer, where: str = "a conversation"
                        ) -> tuple[list[int], list[tuple[int, int] | None], int]:
    """A conversation rendered whole with the model's own chat template, encoded once, and the tokens
    of each assistant turn in it, as (start, end) token positions (None for one that cannot be told
    apart); and how many cannot. A template that marks them (`{% generation %}`) says where they
    are, as transformers' `return_assistant_tokens_mask` (TRL's assistant-only loss) takes them.
    Otherwise by the text: a
    turn runs from the end of its history rendered with the generation prompt (what the model is
    given at inference) to the end of the history through it (its text and what ends the turn,
    `<|im_end|>\\n` in ChatML), where the whole rendering starts with both; a token across that
    seam (a reply starting with a newline merged with the prompt's) counts with the turn. A turn the
    template renders otherwise once a later message follows (Qwen3 drops an earlier turn's <think>
    block) is not learned; the last one always is, as it is the whole rendering's end."""
    try:
        full = tokenizer.render_own_chat(messages, generation_prompt=False)
        encoded = tokenizer.encode_rendered_chat(full)
        if _GENERATION_MARK.search(tokenizer.own_chat_template):
            mask = tokenizer._own_chat.apply_chat_template(list(messages), tokenize=True, return_dict=True,
                                                           return_assistant_tokens_mask=True)["assistant_masks"]
            runs, start = [], None
            for position, flag in enumerate([*mask, 0]):
                if flag and start is None:
                    start = position
                elif not flag and start is not None:
                    runs.append((start, position))
                    start = None
            return list(encoded.ids), runs, 0
        spans, missed = [], 0
        for i, message in enumerate(messages):
            if message["role"] != "assistant":
                continue
            before = tokenizer.render_own_chat(messages[:i]) if i else ""
            through = tokenizer.render_own_chat(messages[: i + 1], generation_prompt=False)
            if full.startswith(through) and through.startswith(before):
                spans.append((len(before), len(through)))
            else:
                spans.append(None)
                missed += 1
    except UserError as exc:  # (the template's own refusal, named by the record it refused)
        raise UserError(f"{where}: {exc}") from None
    if missed and missed == len(spans):
        raise UserError(f"{where}: the model's own chat template renders none of its assistant turns as the end of the "
                        "conversation so far, so what the assistant says cannot be told apart to learn it; fine-tune with "
                        "a template file in its format (--template FILE.json: its wording may name the special tokens)")
    turns: list[tuple[int, int] | None] = []
    for span in spans:
        inside = [k for k, (a, b) in enumerate(encoded.offsets) if span and b > span[0] and a < span[1]]
        turns.append((inside[0], inside[-1] + 1) if inside else None)
    return list(encoded.ids), turns, missed


def encode_own_chat_example(messages: Sequence[dict[str, str]], tokenizer, where: str = "a conversation") -> Encoded:
    """A conversation in the model's own chat template, its assistant turns learned (`own_assistant_turns`)."""
    ids, turns, missed = own_assistant_turns(messages, tokenizer, where)
    learn = [False] * len(ids)
    for start, end in filter(None, turns):
        learn[start:end] = [True] * (end - start)
    return Encoded(ids, learn, unlearned_turns=missed)


def encode_chat_prompt(messages: Sequence[dict[str, str]], tokenizer) -> list[int]:
    """The generation prompt: the history, then <|assistant|>; the one chat renderer of every stage.
    An imported chat model (not fine-tuned in llmkit) is prompted in its own template instead."""
    if getattr(tokenizer, "own_chat_template", None):
        return tokenizer.encode_own_chat(messages)
    special = tokenizer.special_ids
    roles = [special[f"<|{m['role']}|>"] for m in messages] + [special["<|assistant|>"]]
    ids = [tokenizer.bos_id]
    for i, message in enumerate(messages):
        ids.append(roles[i])
        ids.extend(message_ids(message["content"], roles[i], roles[i + 1], tokenizer))
    ids.append(roles[-1])
    return ids


def message_ids(content: str, before: int, after: int, tokenizer) -> list[int]:
    """A message's text as it encodes between two special tokens in one rendered string, which is
    how transformers' `apply_chat_template` encodes the exported template: a token that strips the
    whitespace beside it takes it, and no word-start marker where the tokenizer marks only the
    string's start (`encode_after_special`)."""
    if tokenizer.strips_beside(before)[1]:
        content = content.lstrip()
    if tokenizer.strips_beside(after)[0]:
        content = content.rstrip()
    return tokenizer.encode_after_special(content)


def fit_conversation(messages: list[dict[str, str]], tokenizer, budget: int,
                     encode: Callable[[list[dict[str, str]]], Sequence[int]] | None = None,
                     ) -> tuple[list[dict[str, str]], int, bool | None]:
    """A conversation cut to `budget` tokens of prompt, as chat and generate cut one: its oldest
    exchanges left out (drop_oldest_exchanges), then the end of its last message. Returns (the
    messages; how many were left out; whether the last one was cut, None where even an empty last
    message leaves no room: the messages are then those kept, uncut). `encode`: what is measured
    against the budget (default the generation prompt; fine-tuning's --truncate measures the
    training example, the reply after these messages included)."""
    encode = encode or (lambda kept: encode_chat_prompt(kept, tokenizer))
    kept, dropped = drop_oldest_exchanges(messages, tokenizer, budget, encode)
    *head, last = kept

    def encode_record(record: dict[str, Any]) -> Sequence[int]:
        return encode([*head, dict(last, content=record["content"])])

    record = {"content": last["content"]}
    fitted = fit_field(encode_record, record, "content", tokenizer, budget)
    if fitted is None:
        return kept, dropped, None
    return [*head, dict(last, content=fitted["content"])], dropped, fitted is not record


def drop_oldest_exchanges(messages: list[dict[str, str]], tokenizer, budget: int | None,
                          encode: Callable[[list[dict[str, str]]], Sequence[int]] | None = None,
                          ) -> tuple[list[dict[str, str]], int]:
    """The conversation with its oldest exchanges (a message and the one after it) left out until
    its prompt (`encode`, default the generation prompt) fits in `budget` tokens, a first system
    message kept, the last message always: the one rule of chat, eval and fine-tuning's --truncate.
    Returns it and how many messages were left out."""
    encode = encode or (lambda kept: encode_chat_prompt(kept, tokenizer))
    head = messages[:1] if messages and messages[0]["role"] == "system" else []
    rest = list(messages[len(head):])
    dropped = 0
    while budget is not None and len(rest) > 2 and len(encode(head + rest)) > budget:
        rest, dropped = rest[2:], dropped + 2
    return head + rest, dropped


# -- text templates ------------------------------------------------------------------------------


def _not_text(value: Any) -> str | None:
    """What a field holds where text belongs (null, true, a list ...), or None for text or a number."""
    import math

    from llmkit.jsonl import json_kind

    if isinstance(value, float) and not math.isfinite(value):  # (Python's JSON reader takes NaN: it trained as "nan")
        return f"{value} (which is no JSON number)"
    return None if isinstance(value, (str, int, float)) and not isinstance(value, bool) else json_kind(value)


def render(part: str, record: dict[str, Any], where: str, absent: str | None = None,
           fix: Callable[[], str] | None = None) -> str:
    """The template's text with each placeholder filled from the record (`{a.b}`: its own key "a.b",
    else b within its object a). `absent`: what a field the record lacks becomes; None: an error,
    ending in `fix()` where given (fine-tuning's: the --template the record fits)."""
    values = {}
    for name in plain_fields(part, "the template"):
        value = field_value(record, name)
        if value is ABSENT:
            if absent is None:
                raise UserError(f"{where} has no field {name!r} that the template needs; fields: {', '.join(record) or 'none'}"
                                f"{fix() if fix is not None else ''}")
            value = absent
        # null, true or a list would be written out as "None", "True" or "[1, 2]" and trained on (a number is text enough)
        shown = _not_text(value)
        if shown:
            raise UserError(f"{where} field {name!r} is {shown}, not text; the template needs text there: fix the record "
                            "or leave it out")
        values[name] = value
    text, wording = "", []
    for literal, name, _, _ in string.Formatter().parse(part):
        wording.append((len(text), len(text) + len(literal)))
        text += literal + ("" if name is None else str(values[name]))
    return Rendered(text, wording)


class Rendered(str):
    """A template's text filled in, knowing which of it is the template's own wording: there a
    special token's name (`<|im_start|>` in a template file for an imported ChatML model) is that
    token (`encode_rendered`); in the fields' text it stays text, as every record's text does."""

    wording: tuple[tuple[int, int], ...]

    def __new__(cls, text: str, wording=()):
        self = super().__new__(cls, text)
        self.wording = tuple(wording)
        return self

    @classmethod
    def all_wording(cls, text: str) -> Rendered:
        return cls(text, [(0, len(text))])


def encode_rendered(text: str, tokenizer, encode: Callable[[str], list[int]] | None = None) -> list[int]:
    """Rendered template text as ids: `encode` (default: `encode_after_special`, a prompt's text after
    the start token) for its start, each special token's name in the wording as the token, and
    the text after one as it encodes right after a special token, less the whitespace a token that
    strips beside it takes (Phi-3's), as `apply_chat_template` encodes one string. Plain text (a
    str, not Rendered) has no wording: all of it is encoded as text."""
    encode = encode or tokenizer.encode_after_special
    spans = getattr(text, "wording", ())
    names = [name for name in tokenizer.special_ids if name and any(name in text[a:b] for a, b in spans)]
    if not names:
        return encode(str(text))
    pattern = re.compile("|".join(map(re.escape, sorted(names, key=len, reverse=True))))
    pieces: list[str | int] = []  # the text between special tokens, and the tokens
    start = 0
    for a, b in spans:
        for found in pattern.finditer(text, a, b):
            pieces += [str(text[start:found.start()]), tokenizer.special_ids[found.group()]]
            start = found.end()
    pieces.append(str(text[start:]))
    ids: list[int] = []
    for at, piece in enumerate(pieces):
        if isinstance(piece, int):
            ids.append(piece)
            continue
        if at > 0 and tokenizer.strips_beside(pieces[at - 1])[1]:
            piece = piece.lstrip()
        if at + 1 < len(pieces) and tokenizer.strips_beside(pieces[at + 1])[0]:
            piece = piece.rstrip()
        if piece:
            ids += (encode if at == 0 else tokenizer.encode_after_special)(piece)
    return ids


def fit_field(encode: Callable[[dict[str, Any]], Sequence[int]], record: dict[str, Any], field: str, tokenizer,
              budget: int) -> dict[str, Any] | None:
    """The record, with the end of its text `field` given up until `encode(record)` fits in
    `budget` tokens, which keeps a template's wording and what follows the input: the step of the
    one rule for prompts that are too long (`fit_fields`: fine-tuning with --truncate, eval's and
    generate's template prompts; chat's message). The record itself when it fits; None when even an
    empty field would not."""
    over = len(encode(record)) - budget
    if over <= 0:
        return record
    text = field_value(record, field)  # (the cut is kept under the field's own name, which field_value reads first)
    pieces = tokenizer.encode(text)
    keep = max(0, len(pieces) - over)
    while True:
        cut = tokenizer.decode(pieces[:keep])
        while keep and cut.endswith("\ufffd") and "\ufffd" not in text:
            # a byte-level cut inside a character decodes to U+FFFD, which the model would read: cut before it
            keep -= 1
            cut = tokenizer.decode(pieces[:keep])
        # Decoding a cut token list and encoding it again may merge differently: retry shorter.
        shorter = dict(record, **{field: cut})
        length = len(encode(shorter))
        if length <= budget:
            return shorter
        if keep == 0:  # the empty field tried last
            return None
        keep = max(0, keep - max(1, length - budget))


def fit_fields(encode: Callable[[dict[str, Any]], Sequence[int]], record: dict[str, Any], fields: Sequence[str], tokenizer,
               budget: int) -> dict[str, Any] | None:
    """`fit_field` over several text fields (an instruction, an input): the longest gives up its end
    first, since a prompt's length is mostly its long field (an Alpaca record's input, not its
    instruction); where even emptying it is not enough, it stays empty and the next longest is cut.
    None when every field empty does not fit."""
    fields = sorted(text_fields(record, fields), key=lambda f: -len(field_value(record, f)))
    if not fields:
        return record if len(encode(record)) <= budget else None
    for field in fields:
        fitted = fit_field(encode, record, field, tokenizer, budget)
        if fitted is not None:
            return fitted
        record = dict(record, **{field: ""})
    return None


def text_fields(record: dict[str, Any], fields: Sequence[str]) -> list[str]:
    """Those of `fields` (once each) whose value in `record` is text: what a prompt's cut may shorten
    (a number is left as it is)."""
    return [f for f in dict.fromkeys(fields) if isinstance(field_value(record, f), str)]


def prompt_fields(template: dict[str, Any]) -> list[str]:
    """A text template's prompt placeholders, its input field first."""
    return list(dict.fromkeys([template["input_field"], *_fields(template["prompt"])]))


def encode_text_example(template: dict[str, Any], record: dict[str, Any], tokenizer, where: str,
                        suggest_template: bool = True) -> Encoded:
    """`suggest_template`: a record the template does not fit names the --template it fits (fine-tuning's
    option: eval, scoring a fine-tune on its own template, has none), as the chat template's error does."""
    fix = (lambda: _template_for(record, instead_of=template["name"])) if suggest_template else None
    prompt_text, response_text = (render(template[part], record, where, fix=fix) for part in ("prompt", "response"))
    prompt = [tokenizer.bos_id] + encode_rendered(prompt_text, tokenizer)
    continuation = tokenizer.encode_continuation
    if len(prompt) > 1 and tokenizer.strips_beside(prompt[-1])[1]:  # (a token ending the prompt takes the space after it)
        continuation = lambda text: tokenizer.encode_continuation(text.lstrip())  # noqa: E731
    response = encode_rendered(response_text, tokenizer, continuation) + [tokenizer.eos_id]
    return Encoded(prompt + response, [False] * len(prompt) + [True] * len(response))


def response_frame(template: dict[str, Any]) -> tuple[str, str]:
    """The response's own wording around its target field: ("\\nEnglish:", "") for
    "\\nEnglish: {target}". The lead loses its trailing spaces, which the target's first word
    carries in its token (" A"); either part is "" where another placeholder stands in it."""
    parts = list(string.Formatter().parse(template["response"]))
    target = template.get("target_field") or _fields(template["response"])[0]  # (a hand-written task.json may leave it out)
    at = next(i for i, (_, name, _, _) in enumerate(parts) if name == target)
    # (an escaped "{{" splits the literal text into several parts)
    lead = "".join(literal for literal, _, _, _ in parts[:at + 1]) if all(name is None for _, name, _, _ in parts[:at]) else ""
    after = parts[at + 1:]
    tail = "".join(literal for literal, _, _, _ in after) if all(name is None for _, name, _, _ in after) else ""
    return lead.rstrip(" "), tail


def encode_text_prompt(template: dict[str, Any], text: str, tokenizer) -> list[int]:
    """A generation prompt from one input text (the template's input field)."""
    prompt = render(template["prompt"], {template["input_field"]: text}, "input", absent="")  # (other fields: nothing)
    return [tokenizer.bos_id] + encode_rendered(prompt, tokenizer)


def encode_example(template: dict[str, Any], record: dict[str, Any], tokenizer, where: str,
                   suggest_template: bool = True) -> Encoded:
    if template["type"] == "chat":
        return encode_chat_example(record_messages(record, where, suggest_template), tokenizer, own="jinja" in template,
                                   where=where)
    return encode_text_example(template, record, tokenizer, where, suggest_template)

