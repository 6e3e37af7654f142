"""Tokenizers across the border: llmkit's tokenizer as a transformers `AutoTokenizer` folder
(with the chat template of a fine-tuned checkpoint), and a transformers tokenizer as llmkit's
tokenizer folder (special tokens by role, token byte lengths)."""

from __future__ import annotations

import contextlib
import importlib.util
import json
from pathlib import Path

import numpy as np

from llmkit.errors import UserError
from llmkit.data.templates import CHAT_TEMPLATE  # noqa: F401 (the export writes it; tests read it here)

# Fine-tuned checkpoints carry their prompt format in task.json: llmkit's chat format as Jinja is
# llmkit.data.templates.CHAT_TEMPLATE.
CHAT_ROLE_TOKENS = ("<|system|>", "<|user|>", "<|assistant|>")


def _jinja_format(pattern: str, field: str) -> str | None:
    """A Python format string with one placeholder `{field}` as Jinja, the placeholder filled
    by `message['content']`; None for any other placeholder."""
    import string

    parts = []
    for literal, name, spec, conversion in string.Formatter().parse(pattern):
        if literal:
            parts.append("{{ " + json.dumps(literal, ensure_ascii=False) + " }}")
        if name is None:
            continue
        if name != field or spec or conversion:
            return None
        parts.append("{{ message['content'] }}")
    return "".join(parts)


def chat_template_for(task) -> str | None:
    """The Jinja chat template for a fine-tuned checkpoint's prompt format (a TaskRecord); None
    for a base model (it was never trained on one) or a template Jinja cannot express."""
    template = task.template if task is not None else None
    if not isinstance(template, dict):
        return None
    if template.get("type") == "chat":  # (llmkit's format, or the model's own that the fine-tune learned)
        return template["jinja"] if isinstance(template.get("jinja"), str) else CHAT_TEMPLATE
    if template.get("type") != "text":
        return None
    # text: [BOS] prompt.format(input) response.format(target) [EOS], the user message as the
    # input and the assistant message as the target.
    prompt = _jinja_format(str(template.get("prompt", "")), str(template.get("input_field", "")))
    response = _jinja_format(str(template.get("response", "")), str(template.get("target_field", "")))
    if not prompt or not response:
        return None
    return (
        "{{ bos_token }}{% for message in messages %}"
        "{% if message['role'] == 'user' %}" + prompt + "{% elif message['role'] == 'assistant' %}{% generation %}" + response
        + "{{ eos_token }}{% endgeneration %}{% else %}{{ raise_exception('this model takes user and assistant messages only') }}"
        "{% endif %}{% endfor %}"
    )


def stop_token_ids(tok) -> list[int]:
    """The tokens llmkit's generation stops at, for generation_config.json's eos_token_id: end of text
    and every other special token (a role token starts the next turn; the start, padding and mask
    tokens have no place in a completion: llmkit.inference.prompts.chat_stop_ids). Until 2026-12-07
    the end of text only (and a chat model's role tokens): transformers' greedy generate() went on
    past a <s> where llmkit stopped."""
    from llmkit.inference.prompts import chat_stop_ids

    return list(dict.fromkeys([*tok.end_ids, *chat_stop_ids(tok)]))


def save_hf_tokenizer(tok, directory: Path, *, model_max_length: int, chat_template: str | None = None,
                      start_id: int | None = None) -> None:
    """tokenizer.json + tokenizer_config.json for `AutoTokenizer`, special tokens by role.

    `start_id`, the token the model saw before every document (llmkit.inference.prompts.
    document_start_id), is prepended by a post-processor, so that `tok(prompt)` gives the ids
    `llmkit generate` gives the model and greedy `model.generate` continues the same way.
    """
    from transformers import PreTrainedTokenizerFast

    from tokenizers import Tokenizer
    from tokenizers.processors import TemplateProcessing

    roles = {}
    for role in ("bos", "eos", "pad", "mask"):
        index = getattr(tok, f"{role}_id", None)
        if index is not None:
            roles[f"{role}_token"] = tok.hf.id_to_token(index)
    unk = json.loads(tok.hf.to_str()).get("model", {}).get("unk_token")
    if isinstance(unk, str) and tok.hf.token_to_id(unk) is not None:  # a Llama-style vocabulary's unknown piece
        roles["unk_token"] = unk
    named = set(roles.values())
    extra = [name for name, _ in sorted(tok.special_ids.items(), key=lambda item: item[1]) if name not in named]
    # A copy: llmkit's loader switches the live object to encode special-token text as text,
    # while transformers tokenizers parse it (chat templates rely on that).
    backend = Tokenizer.from_str(tok.hf.to_str())
    if start_id is not None:
        start = tok.hf.id_to_token(start_id)
        backend.post_processor = TemplateProcessing(single=f"{start} $A", pair=f"{start} $A $B:1", special_tokens=[(start, start_id)])
    # padded on the left, as llmkit's generation pads a batch: a right-padded row of generate() continued
    # after its padding (transformers warns), and so gave other tokens than alone
    fast = PreTrainedTokenizerFast(
        tokenizer_object=backend, model_max_length=model_max_length, additional_special_tokens=extra, padding_side="left",
        **roles
    )
    if chat_template:
        fast.chat_template = chat_template
    fast.save_pretrained(directory)
    # Spell tokenizer_config.json the way transformers 4.x reads it too (v5 accepts all of it):
    # the class every release knows, `additional_special_tokens` (4.x wants a dict under v5's
    # `extra_special_tokens`), and the chat template inline as well as in chat_template.jinja.
    path = directory / "tokenizer_config.json"
    settings = json.loads(path.read_text(encoding="utf-8"))
    settings["tokenizer_class"] = "PreTrainedTokenizerFast"
    settings.pop("backend", None)
    extra_tokens = settings.pop("extra_special_tokens", None)
    if extra_tokens:
        settings["additional_special_tokens"] = list(extra_tokens)
    if fast.chat_template:
        settings["chat_template"] = fast.chat_template
    path.write_text(json.dumps(settings, indent=2, sort_keys=True, ensure_ascii=False) + "\n", encoding="utf-8")


def post_processor_of(tokenizer) -> dict | None:
    """A tokenizers.Tokenizer's post-processor as JSON (export records llmkit's own, which it replaces)."""
    return json.loads(tokenizer.to_str()).get("post_processor")


def with_post_processor(tokenizer, post_processor: dict | None):
    """A copy of `tokenizer` with this post-processor (JSON, or None): import puts back the one the
    exported tokenizer had, so export -> import gives back tokenizer.json byte for byte (and llmkit,
    which compares tokenizers by that file, sees the same tokenizer). Encoding is unchanged:
    llmkit places its special tokens itself."""
    from tokenizers import Tokenizer

    data = json.loads(tokenizer.to_str())
    data["post_processor"] = post_processor
    try:
        return Tokenizer.from_str(json.dumps(data))
    except Exception as exc:  # noqa: BLE001 - tokenizers raises a bare Exception for a malformed component
        from llmkit.interop.hf_files import LLMKIT_CONFIG_FILE

        raise UserError(f"the tokenizer_post_processor in {LLMKIT_CONFIG_FILE} is not one tokenizers can read "
                        f"({' '.join(str(exc).split())[:100]}); delete that key from the file") from None


def read_hf_tokenizer(src: Path):
    """The fast (tokenizers) tokenizer of a transformers directory: tokenizer.json, or the slow
    files (vocab.json + merges.txt, ...) converted by transformers."""
    from tokenizers import Tokenizer

    path = src / "tokenizer.json"
    if path.is_file():
        try:
            return _supported(Tokenizer.from_file(str(path)), path)
        except UserError:
            raise
        except Exception as exc:
            raise UserError(f"{path} is not a valid tokenizers file ({exc}); re-save the tokenizer") from exc
    # a pair of files, one of them missing: said as such (transformers' own error names neither)
    for have, need in (("vocab.json", "merges.txt"), ("merges.txt", "vocab.json")):
        if (src / have).is_file() and not (src / need).is_file() and not (src / "tokenizer.model").is_file():
            raise UserError(f"{src} has {have} but no {need}, which a GPT-2-style (BPE) tokenizer needs beside it; copy the "
                            "model's tokenizer files there (or its tokenizer.json)")
    # the files holding a vocabulary (tokenizer_config.json holds none: from it alone transformers
    # builds a tokenizer of its special tokens, which encodes every text to nothing)
    slow_files = ("tokenizer.model", "vocab.json", "merges.txt", "vocab.txt", "spiece.model")
    if not any((src / name).is_file() for name in slow_files):
        raise UserError(f"{src} has no tokenizer vocabulary (tokenizer.json, tokenizer.model, vocab.json + merges.txt); copy "
                        "the model's tokenizer there, or save it with AutoTokenizer(...).save_pretrained")
    try:
        from transformers import AutoTokenizer

        with quiet_transformers():
            backend = AutoTokenizer.from_pretrained(str(src), local_files_only=True).backend_tokenizer
    except Exception as exc:
        reason = _shortened(" ".join(str(exc).split())) or type(exc).__name__
        sentencepiece = (src / "tokenizer.model").is_file() and importlib.util.find_spec("sentencepiece") is None
        raise UserError(
            f"{src} has no tokenizer.json and transformers could not convert its tokenizer files ({reason}); "
            f"save the tokenizer there with AutoTokenizer(...).save_pretrained{' or install sentencepiece' if sentencepiece else ''}"
        ) from exc
    _supported(backend, src)
    size = backend.get_vocab_size(with_added_tokens=False)
    if size < SMALLEST_VOCABULARY:
        raise UserError(f"{src}'s tokenizer files convert to a vocabulary of {size} token(s); copy the model's full tokenizer "
                        "there (tokenizer.json), or save it with AutoTokenizer(...).save_pretrained")
    return backend


SMALLEST_VOCABULARY = 32  # below this, conversion kept special tokens only (a byte-level vocabulary has 256)


def _shortened(text: str, limit: int = 160) -> str:
    """`text` cut at a word boundary to about `limit` characters (a cut mid-word read as a typo)."""
    return text if len(text) <= limit else text[:limit].rsplit(" ", 1)[0] + " ..."


def _supported(tokenizer, where: Path):
    """The tokenizer, unless it is WordPiece: its "##" continuation pieces are glued by its decoder
    only when the ids are decoded together, and count as bytes of text, so streamed text and bits
    per byte came out wrong (BERT-style models are not the causal LMs llmkit imports anyway); or
    unless its pre-tokenizer drops the whitespace between words (a review: `First CitizenCitizen`
    generated, 0 bytes counted for `x  y   z`)."""
    described = json.loads(tokenizer.to_str())
    kind = described.get("model", {}).get("type")
    if kind == "WordPiece":
        raise UserError(f"{where} is a WordPiece tokenizer (BERT's kind), which llmkit does not import: its \"##\" pieces "
                        "decode wrongly one at a time (streaming) and would count as bytes of text (bits per byte)")
    dropping = sorted(_whitespace_dropping(described.get("pre_tokenizer")))
    if dropping:
        raise UserError(f"{where} splits text with {', '.join(dropping)}, which drops the whitespace between words: llmkit "
                        "does not import it, as its text would decode without spaces and its tokens count too few bytes "
                        "(bits per byte); a byte-level BPE or SentencePiece tokenizer keeps every character")
    return tokenizer


def _whitespace_dropping(pre_tokenizer) -> set[str]:
    """The pre-tokenizers within `pre_tokenizer` (a Sequence's too) that drop whitespace from the text."""
    if not isinstance(pre_tokenizer, dict):
        return set()
    kind = pre_tokenizer.get("type")
    if kind == "Sequence":
        return set().union(*(_whitespace_dropping(p) for p in pre_tokenizer.get("pretokenizers") or []))
    if kind == "Split" and str(pre_tokenizer.get("behavior", "")).lower() == "removed":
        return {"Split (behavior Removed)"}
    return {kind} if kind in ("Whitespace", "WhitespaceSplit", "BertPreTokenizer", "CharDelimiterSplit") else set()


@contextlib.contextmanager
def quiet_transformers():
    """transformers' own warnings (on stderr, several lines) would come before llmkit's one-line
    error or note; llmkit says what matters itself."""
    from transformers.utils import logging as hf_logging

    before = hf_logging.get_verbosity()
    hf_logging.set_verbosity_error()
    try:
        yield
    finally:
        hf_logging.set_verbosity(before)


def hf_special_tokens(src: Path, config_json: dict, tokenizer) -> dict[str, str]:
    """Role ("bos", "eos", "pad", "mask") -> token text of an imported tokenizer.

    From tokenizer_config.json, else config.json's ids, else llmkit's own names when the
    vocabulary has them. GPT-2 style vocabularies have one `<|endoftext|>` for every role, and
    Llama has no pad token: a missing bos or pad falls back to eos (transformers' usual choice).
    """
    from llmkit.data.tokenizer import LLMKIT_ROLES

    settings = {}
    settings_path = src / "tokenizer_config.json"
    if settings_path.is_file():
        with contextlib.suppress(json.JSONDecodeError, UnicodeDecodeError, RecursionError):
            settings = json.loads(settings_path.read_text(encoding="utf-8"))
        if not isinstance(settings, dict):  # (as an unreadable file: the ids in config.json decide)
            settings = {}
    specials = {t.content for t in tokenizer.get_added_tokens_decoder().values() if t.special}
    roles: dict[str, str] = {}
    not_special: dict[str, str] = {}  # named for a role, but not a special token
    named: set[str] = set()  # the roles tokenizer_config.json names (config.json's ids are often a class default)
    for role in ("bos", "eos", "pad", "mask"):
        value = settings.get(f"{role}_token")
        if isinstance(value, dict):  # an AddedToken written out
            value = value.get("content")
        if isinstance(value, str):
            named.add(role)
        else:
            index = config_json.get(f"{role}_token_id")
            if isinstance(index, list):
                index = index[0] if index else None
            in_vocabulary = isinstance(index, int) and 0 <= index < tokenizer.get_vocab_size(with_added_tokens=True)
            value = tokenizer.id_to_token(index) if in_vocabulary else None
        if value is None and LLMKIT_ROLES[role] in specials:
            value = LLMKIT_ROLES[role]
        if value is not None and value in specials:
            roles[role] = value
        elif value is not None:
            not_special[role] = value
    # A bos tokenizer_config.json names must not fall back to eos: every prompt would start otherwise.
    # (A config.json bos_token_id on an ordinary token is LlamaConfig's default left in place: transformers adds no bos.)
    for role in ("eos", "bos"):
        if role not in roles and role in not_special and (role == "eos" or role in named):
            if tokenizer.token_to_id(not_special[role]) is None:
                raise UserError(f"{src}/tokenizer_config.json names {role} {not_special[role]!r}, which its tokenizer's "
                                f"vocabulary does not have; name the token the model was trained with as {role}_token there")
            raise UserError(
                f"{src} names {role} {not_special[role]!r}, but its tokenizer.json does not mark that token special, so "
                "llmkit cannot use it as a role; mark it special (tokenizer.add_special_tokens) and save the tokenizer again"
            )
    if "eos" not in roles:
        raise UserError(
            f"cannot tell which token of {src}'s tokenizer ends a text (no eos_token in tokenizer_config.json, "
            "no eos_token_id in config.json); add one there"
        )
    roles.setdefault("bos", roles["eos"])
    roles.setdefault("pad", roles["eos"])
    return roles


def write_tokenizer_folder(tokenizer, roles: dict[str, str], folder: Path, src: Path, end_of_turn: list[str] = (),
                           chat_template: str | None = None) -> None:
    """tokenizer.json + token_bytes.npy, and special_tokens.json when the roles are not llmkit's
    names or tokens besides eos end a reply (the shared loader reads it); then load the folder the
    way every stage will."""
    from llmkit.data.tokenizer import (
        CHAT_TEMPLATE_FILE, END_OF_TURN, LLMKIT_ROLES, SPECIAL_ROLES_FILE, TOKEN_BYTES_FILE, load_tokenizer, token_byte_lengths,
    )

    folder.mkdir(parents=True, exist_ok=True)
    tokenizer.save(str(folder / "tokenizer.json"))
    np.save(folder / TOKEN_BYTES_FILE, token_byte_lengths(tokenizer), allow_pickle=False)
    if end_of_turn or any(token != LLMKIT_ROLES[role] for role, token in roles.items()):
        written = {**roles, **({END_OF_TURN: list(end_of_turn)} if end_of_turn else {})}
        (folder / SPECIAL_ROLES_FILE).write_text(json.dumps(written, indent=2, sort_keys=True) + "\n", encoding="utf-8")
    if chat_template:
        (folder / CHAT_TEMPLATE_FILE).write_text(chat_template, encoding="utf-8")
    loaded = load_tokenizer(folder)
    if (loaded.bos_id, loaded.eos_id, loaded.pad_id) != tuple(tokenizer.token_to_id(roles[r]) for r in ("bos", "eos", "pad")):
        raise AssertionError(f"the tokenizer loader misreads the special-token roles {roles} of {src}")
