"""The shared tokenizer: a byte-level BPE `tokenizer.json` (HF tokenizers) plus its byte-length table.

Every stage that turns text into ids or back goes through `load_tokenizer(dir)`, where `dir`
holds `tokenizer.json` and `token_bytes.npy` (a tokenizer artifact, or the `tokenizer/` folder
of a tokens or checkpoint artifact).

Ordinary text never yields special-token ids: `<|eos|>` typed into a document is encoded as
the bytes `<`, `|`, `eos`, ... . Special ids are only ever inserted on purpose, by id
(`tok.eos_id`, `tok.special_ids["<|user|>"]`).
"""

from __future__ import annotations

import json
import re
import shutil
from collections.abc import Iterable, Sequence
from functools import cached_property, lru_cache
from itertools import pairwise
from pathlib import Path
from typing import Any

import numpy as np

from llmkit.errors import UserError

TOKENIZER_FILE = "tokenizer.json"
TOKEN_BYTES_FILE = "token_bytes.npy"
TOKENIZER_FILES = (TOKENIZER_FILE, TOKEN_BYTES_FILE)
# Optional: {"bos": ..., "eos": ..., "pad": ..., "mask": ...} -> token text, for tokenizers whose
# special tokens are not named like llmkit's (an imported GPT-2 has one <|endoftext|> for all).
SPECIAL_ROLES_FILE = "special_tokens.json"
CHAT_TEMPLATE_FILE = "chat_template.jinja"  # an imported chat model's own template (transformers' Jinja)
LLMKIT_ROLES = {"bos": "<|bos|>", "eos": "<|eos|>", "pad": "<|pad|>", "mask": "<|mask|>"}

# Ids 0..6 of every llmkit vocabulary, in this order (the chat roles serve fine-tuning templates).
from llmkit.data.special_tokens import DEFAULT_SPECIAL_TOKENS, REQUIRED_SPECIAL_TOKENS  # noqa: E402,F401  (re-exported)

# Han, Hiragana and Katakana have no spaces between words: they form pre-tokens of their own so
# that a CJK run never glues onto neighbouring Latin letters, and BPE learns merges inside it.
# The prolonged sound mark ー (and its half-width ｰ) lengthens a katakana vowel, and the half-width
# voicing marks ﾞ ﾟ voice one (ｶﾞ), but they are of the
# Common script: outside the class, コーヒー split at every ー and the mark glued onto a Latin word
# after it (カレーrice: カレ | ーrice).
_CJK = r"\p{Han}\p{Hiragana}\p{Katakana}\x{30FC}\x{FF70}\x{FF9E}\x{FF9F}"
_CJK_BEFORE_2026_12_05 = r"\p{Han}\p{Hiragana}\p{Katakana}"
# The same class for Python's `regex` module (which spells code points as the characters themselves)
CJK_CHARACTERS = re.sub(r"\\x\{([0-9A-F]+)\}", lambda m: chr(int(m.group(1), 16)), _CJK)


def _split_patterns(cjk: str) -> tuple[str, str]:
    """The pre-tokenizer's pattern (tokenizers) and the same split for tiktoken, with `cjk` the
    characters of CJK runs.

    The GPT-4 / Llama-3 split: English contractions, words (with one leading non-letter such as
    a space), CJK runs, numbers in groups of at most 3 digits, punctuation runs, newlines, spaces;
    a run of spaces leaves its last one to the word that follows, which takes a lookahead. The
    same pattern runs unchanged in Oniguruma (tokenizers) and fancy-regex (tiktoken). tiktoken's
    is faster grouped: fancy-regex walks a top-level alternation that holds a lookahead branch by
    branch, one call into the regex crate per branch tried; grouped, the lookahead-free branches
    are one automaton and one call. Leftmost-first alternation keeps the branches' order inside
    the group, so the pieces are the same (tested against tokenizers); encoding is 1.3x faster
    (0.60 against 0.46 s on 11 MB of English and Chinese)."""
    plain = (
        r"(?i:'s|'t|'re|'ve|'m|'ll|'d)"
        rf"|[^\r\n\p{{L}}\p{{N}}]?[\p{{L}}&&[^{cjk}]]+"
        rf"|[{cjk}]+"
        r"|\p{N}{1,3}"
        r"| ?[^\s\p{L}\p{N}]+[\r\n]*"
        r"|\s*[\r\n]+"
    )
    spaces = r"\s+(?!\S)|\s+"
    return f"{plain}|{spaces}", f"(?:{plain})|{spaces}"


SPLIT_PATTERN, TIKTOKEN_SPLIT_PATTERN = _split_patterns(_CJK)
# Each split llmkit has trained tokenizers with -> tiktoken's form of it (the fast path of older ones too).
FAST_SPLITS = dict([_split_patterns(_CJK), _split_patterns(_CJK_BEFORE_2026_12_05)])


@lru_cache(maxsize=1)
def bytes_to_unicode() -> dict[int, str]:
    """GPT-2's reversible map from the 256 byte values to printable characters (ByteLevel's alphabet)."""
    printable = list(range(ord("!"), ord("~") + 1)) + list(range(ord("¡"), ord("¬") + 1)) + list(range(ord("®"), ord("ÿ") + 1))
    chars = printable[:]
    extra = 0
    for byte in range(256):
        if byte not in printable:
            printable.append(byte)
            chars.append(256 + extra)
            extra += 1
    return dict(zip(printable, map(chr, chars)))


@lru_cache(maxsize=1)
def unicode_to_bytes() -> dict[str, int]:
    return {char: byte for byte, char in bytes_to_unicode().items()}


@lru_cache(maxsize=1)
def _byte_of_char() -> dict[int, int]:
    return {ord(char): byte for byte, char in bytes_to_unicode().items()}


def byte_level_bytes(piece: str) -> bytes:
    """The raw bytes of a byte-level BPE piece ('Ġworld' -> b' world'): one character per byte."""
    return piece.translate(_byte_of_char()).encode("latin-1")


def piece_to_bytes(piece: str) -> bytes:
    """The raw bytes of a vocabulary entry.

    Byte-level BPE pieces go through GPT-2's byte alphabet ('Ġworld' -> b' world'); pieces of an
    imported SentencePiece-style vocabulary (Llama) use '▁' for a space and '<0xNN>' for one raw byte.
    """
    if len(piece) == 6 and piece.startswith("<0x") and piece.endswith(">"):
        try:
            return bytes([int(piece[3:5], 16)])
        except ValueError:
            pass
    table = unicode_to_bytes()
    if all(c in table for c in piece):
        return bytes(table[c] for c in piece)
    return piece.replace("\u2581", " ").encode("utf-8")


def split_pre_tokenizer() -> Any:
    """llmkit's split of text into pre-tokens (before the byte-level mapping): offsets in characters."""
    from tokenizers import Regex, pre_tokenizers

    return pre_tokenizers.Split(Regex(SPLIT_PATTERN), behavior="isolated", invert=False)


def new_byte_level_bpe() -> Any:
    """An untrained byte-level BPE tokenizer with llmkit's pre-tokenizer and decoder."""
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers

    tok = Tokenizer(models.BPE())
    tok.pre_tokenizer = pre_tokenizers.Sequence(
        [split_pre_tokenizer(), pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=False)]
    )
    tok.decoder = decoders.ByteLevel()
    return tok


def compute_token_bytes(hf: Any) -> np.ndarray:
    """int32 [vocab_size]: UTF-8 byte length of each token of a byte-level BPE tokenizer (llmkit's
    own), 0 for special tokens (bits-per-byte needs it). Every character of a byte-level piece
    stands for one byte."""
    specials = {t.content for t in hf.get_added_tokens_decoder().values() if t.special}
    byte_chars = frozenset(unicode_to_bytes())
    lengths = np.zeros(hf.get_vocab_size(), dtype=np.int32)
    for piece, idx in hf.get_vocab().items():
        if piece not in specials:
            lengths[idx] = len(piece) if byte_chars.issuperset(piece) else len(piece_to_bytes(piece))
    return lengths


def refuse_gapped_ids(tokenizer) -> dict[str, int]:
    """The vocabulary (with added tokens) of a tokenizers.Tokenizer whose ids are 0..N-1; one whose ids
    have gaps is refused: the model's rows and the shards' dtype follow the count N, and an id past
    it was wrapped into uint16 shards, or crashed generation. (One pass over the vocabulary: 30 ms at
    65,536 tokens, so import and tokenize check, not every load.)"""
    vocab_size = tokenizer.get_vocab_size(with_added_tokens=True)
    vocab = tokenizer.get_vocab(with_added_tokens=True)
    past = max(vocab.values(), default=-1)
    if past >= vocab_size:
        raise UserError(f"the tokenizer's ids are not 0..{vocab_size - 1}: it has {vocab_size:,} tokens and id {past:,}; "
                        "renumber its vocabulary without gaps")
    return vocab


def token_byte_lengths(tokenizer) -> np.ndarray:
    """UTF-8 byte length of every token of an imported vocabulary (int32 [vocab]); 0 for special tokens.

    Byte-level BPE pieces are decoded through GPT-2's byte alphabet; SentencePiece-style pieces
    (Llama) count "▁" as a space and `<0xNN>` byte-fallback pieces as one byte.
    """
    vocab_size = tokenizer.get_vocab_size(with_added_tokens=True)
    specials = {t.content for t in tokenizer.get_added_tokens_decoder().values() if t.special}
    lengths = np.zeros(vocab_size, dtype=np.int32)
    vocab = refuse_gapped_ids(tokenizer)
    for piece, index in vocab.items():
        if piece not in specials:
            lengths[index] = len(piece_to_bytes(piece))
    return lengths


def _rewritten(hf: Any, sections: tuple[str, ...], rewrite) -> Any:
    """A copy of a tokenizers.Tokenizer with `rewrite(component)` applied to every component of
    `sections` ("normalizer", "pre_tokenizer", "decoder"), inside Sequences too; `rewrite` returns
    the component itself, a changed copy, or None to drop it. The same object when nothing changed."""
    from tokenizers import Tokenizer

    data = json.loads(hf.to_str())
    changed = False

    def walk(component: dict | None) -> dict | None:
        nonlocal changed
        if not isinstance(component, dict):
            return component
        if component.get("type") == "Sequence":
            key = next((k for k in ("normalizers", "pretokenizers", "decoders") if k in component), None)
            if key is None:
                return component
            return {**component, key: [p for p in (walk(part) for part in component[key]) if p is not None]}
        result = rewrite(component)
        changed = changed or result is not component
        return result

    for section in sections:
        data[section] = walk(data.get(section))
    if not changed:
        return hf
    copy = Tokenizer.from_str(json.dumps(data))
    copy.encode_special_tokens = True
    return copy


def _never_prepending(component: dict) -> dict:
    """A Metaspace component that does not add SentencePiece's word-start marker to a text's start."""
    if component.get("type") == "Metaspace" and component.get("prepend_scheme", "always") != "never":
        return {**component, "prepend_scheme": "never"}
    return component


def _without_start_marker(hf: Any) -> Any:
    """A copy of a tokenizers.Tokenizer that does not prepend SentencePiece's word-start marker to
    the text it encodes (the same object when it has none)."""

    def strip(component: dict) -> dict | None:
        if component.get("type") == "Prepend":
            return None
        if component.get("type") == "ByteLevel" and component.get("add_prefix_space"):  # GPT-2-style "Ġ" before the first word
            return {**component, "add_prefix_space": False}
        return _never_prepending(component)

    return _rewritten(hf, ("normalizer", "pre_tokenizer"), strip)


def _keeping_the_first_space(hf: Any) -> Any:
    """A copy of a tokenizers.Tokenizer whose decoder keeps the space the text's first token
    starts with (the same object when its decoder drops none)."""

    def keep(component: dict) -> dict:
        if component.get("type") == "Strip" and component.get("start"):
            return {**component, "start": 0}
        return _never_prepending(component)

    return _rewritten(hf, ("decoder",), keep)


# An imported chat template is code from the model's folder (sandboxed by transformers): bounded in time,
# and in what it writes beyond the messages (role headers, a default system text, tool schemas).
RENDER_SECONDS = 10.0
RENDER_GROWTH, RENDER_FRAME = 4, 1_000_000


class _RenderTimeout(BaseException):
    """Raised into a chat template's rendering at its time limit (not an Exception: jinja2 passes it on)."""


def _render_limit(seconds: float):
    """A context in which SIGALRM stops the body after `seconds` (on the main thread of a POSIX
    process; elsewhere, or where the caller's own timer or SIGALRM handler is set, which this one
    would cancel or replace, no limit)."""
    import contextlib
    import signal
    import threading

    if not hasattr(signal, "setitimer") or threading.current_thread() is not threading.main_thread() or \
            signal.getitimer(signal.ITIMER_REAL)[0] > 0 or signal.getsignal(signal.SIGALRM) not in (signal.SIG_DFL, None):
        return contextlib.nullcontext()

    @contextlib.contextmanager
    def limited():
        def expired(signum, frame):
            raise _RenderTimeout()

        previous = signal.signal(signal.SIGALRM, expired)
        signal.setitimer(signal.ITIMER_REAL, seconds)
        try:
            yield
        finally:
            signal.setitimer(signal.ITIMER_REAL, 0)
            signal.signal(signal.SIGALRM, previous)

    return limited()


class TextTokenizer:
    """What the training, generation and evaluation stages need from a tokenizer."""

    def __init__(self, hf: Any, token_bytes: np.ndarray, path: Path | None = None, roles: dict[str, str] | None = None,
                 end_of_turn: Sequence[str] = (), own_chat_template: str | None = None):
        self.hf = hf
        # Special tokens typed into text stay text: only ids inserted on purpose are special.
        self.hf.encode_special_tokens = True
        self.token_bytes = np.asarray(token_bytes, dtype=np.int32)
        self.path = path
        self.special_ids: dict[str, int] = {
            t.content: idx for idx, t in sorted(hf.get_added_tokens_decoder().items()) if t.special
        }
        self.roles = {**LLMKIT_ROLES, **(roles or {})}
        # tokens besides eos that end a reply (an imported chat model's generation_config.json lists them)
        self.end_of_turn = tuple(end_of_turn)
        # an imported chat model's Jinja template: chat prompts are rendered with it (encode_own_chat);
        # llmkit.model.io.load_checkpoint drops it for a checkpoint fine-tuned in llmkit, which has its own format
        self.own_chat_template = own_chat_template
        missing = [self.roles[r] for r in ("bos", "eos", "pad") if self.roles[r] not in self.special_ids]
        if missing:
            raise UserError(f"tokenizer {path} lacks special token(s) {', '.join(missing)}; retrain it with llmkit tokenizer train")
        if len(self.token_bytes) != self.vocab_size:
            raise UserError(
                f"{TOKEN_BYTES_FILE} in {path} has {len(self.token_bytes)} entries for a vocabulary of {self.vocab_size}; "
                "the tokenizer folder is inconsistent, retrain or recopy it"
            )

    @property
    def vocab_size(self) -> int:
        return self.hf.get_vocab_size()

    @property
    def bos_id(self) -> int:
        return self.special_ids[self.roles["bos"]]

    @property
    def eos_id(self) -> int:
        return self.special_ids[self.roles["eos"]]

    def encode_own_chat(self, messages: Sequence[dict[str, str]], generation_prompt: bool = True) -> list[int]:
        """A conversation and (`generation_prompt`) the assistant's turn to answer, rendered with the
        model's own chat template as transformers renders it (`apply_chat_template`) and encoded as it
        encodes the result: special tokens written in the text are those tokens."""
        return self.encode_rendered_chat(self.render_own_chat(messages, generation_prompt)).ids

    def encode_rendered_chat(self, text: str) -> Any:
        """A rendered conversation encoded as transformers encodes it (its ids and character offsets)."""
        return self._own_chat.backend_tokenizer.encode(text, add_special_tokens=False)

    def render_own_chat(self, messages: Sequence[dict[str, str]], generation_prompt: bool = True) -> str:
        """The text of `encode_own_chat`, its template's failures one line each."""
        renderer = self._own_chat  # (built, and transformers imported, before the clock starts)
        try:
            with _render_limit(RENDER_SECONDS):
                text = renderer.apply_chat_template(list(messages), add_generation_prompt=generation_prompt, tokenize=False)
        except MemoryError:
            raise UserError("the model's chat template wrote more than memory holds for one conversation (an imported "
                            "chat_template.jinja): fix or remove the checkpoint's tokenizer/chat_template.jinja") from None
        except _RenderTimeout:
            raise UserError(f"the model's chat template took more than {RENDER_SECONDS:g} s to render one conversation: it "
                            "loops (an imported chat_template.jinja); fix or remove the checkpoint's "
                            "tokenizer/chat_template.jinja, or import the model again without it") from None
        except Exception as exc:  # noqa: BLE001 - jinja2's errors, and the template's own raise_exception
            reason = " ".join(str(exc).split())[:200]
            raise UserError(f"the model's chat template refused the conversation ({reason}); check the roles and their "
                            "order it takes") from None
        given = sum(len(str(m.get("content", ""))) for m in messages)
        if len(text) > RENDER_GROWTH * given + RENDER_FRAME:  # (a template that writes 'x' * 3e8 crashed the encoder)
            raise UserError(f"the model's chat template rendered {len(text):,} characters from {given:,} of messages; it "
                            "writes far more than a conversation (an imported chat_template.jinja): fix or remove the "
                            "checkpoint's tokenizer/chat_template.jinja")
        return text

    @cached_property
    def _own_chat(self) -> Any:
        """transformers' tokenizer around this one, holding the model's template (its renderer)."""
        from tokenizers import Tokenizer
        from transformers import PreTrainedTokenizerFast

        wrapper = PreTrainedTokenizerFast(tokenizer_object=Tokenizer.from_str(self.hf.to_str()),
                                          bos_token=self.roles["bos"], eos_token=self.roles["eos"])
        wrapper.chat_template = self.own_chat_template
        return wrapper

    @cached_property
    def unknown_text_id(self) -> int | None:
        """The token a tokenizer without byte fallback writes for text it has no token for (`<unk>`);
        None where bytes stand for such text (byte-level BPE, byte fallback). Once per tokenizer: a
        Unigram model names it by id, which only its saved form holds."""
        model = self.hf.model
        if getattr(model, "byte_fallback", False):
            return None
        token = getattr(model, "unk_token", None)
        if isinstance(token, str):
            return self.hf.token_to_id(token)
        if type(model).__name__ == "Unigram":
            unk_id = json.loads(self.hf.to_str())["model"].get("unk_id")
            return unk_id if isinstance(unk_id, int) else None
        return None

    @property
    def end_ids(self) -> list[int]:
        """eos, then the end-of-turn tokens: what ends a generated reply."""
        ids = [self.eos_id] + [self.hf.token_to_id(token) for token in self.end_of_turn]
        return list(dict.fromkeys(i for i in ids if i is not None))

    @property
    def pad_id(self) -> int:
        return self.special_ids[self.roles["pad"]]

    @property
    def mask_id(self) -> int | None:
        return self.special_ids.get(self.roles["mask"])

    def encode(self, text: str) -> list[int]:
        return self.hf.encode(text, add_special_tokens=False).ids

    def encode_continuation(self, text: str) -> list[int]:
        """`text` as it encodes right after other text (a template's response after its prompt).
        SentencePiece-style tokenizers (Llama's, imported) mark the start of every text they encode
        with "▁" (a Prepend normalizer, or Metaspace's prepend scheme); mid-text that marker is not
        there, so it is left out here, or every fine-tuning example would carry an extra "▁" token
        at the seam that the prompt and response never have written together. Byte-level BPE adds
        one only with `add_prefix_space` (llmkit's own and GPT-2's do not: the same as `encode`)."""
        if not hasattr(self, "_continuation"):
            self._continuation = _without_start_marker(self.hf)
        return self._continuation.encode(text, add_special_tokens=False).ids

    def encode_after_special(self, text: str) -> list[int]:
        """`text` as it encodes inside one rendered string right after a special token (a template's
        text after the start token or a role token: how `apply_chat_template` encodes the exported
        template). Each stretch of text between special tokens is pre-tokenized on its own, so a
        Prepend normalizer or Metaspace's "always" marks it as `encode` does; Metaspace's "first"
        (current Llama and Mistral tokenizer.json files) marks only the stretch at the string's very
        start, so none here. For every other tokenizer, llmkit's own included, this is `encode`."""
        return self._after_special.encode(text, add_special_tokens=False).ids

    @cached_property
    def _after_special(self) -> Any:
        def first_only(component: dict) -> dict:
            if component.get("type") == "Metaspace" and component.get("prepend_scheme") == "first":
                return {**component, "prepend_scheme": "never"}
            return component

        return _rewritten(self.hf, ("pre_tokenizer",), first_only)

    def strips_beside(self, token_id: int) -> tuple[bool, bool]:
        """(lstrip, rstrip) of an added token: whether, inside one string, it takes in the
        whitespace before it and after it (Phi-3's role tokens do), so that the text beside it
        encodes without that whitespace."""
        return self._stripping.get(int(token_id), (False, False))

    @cached_property
    def _stripping(self) -> dict[int, tuple[bool, bool]]:
        return {idx: (bool(t.lstrip), bool(t.rstrip)) for idx, t in self.hf.get_added_tokens_decoder().items()
                if t.lstrip or t.rstrip}

    def encode_batch(self, texts: Sequence[str]) -> list[list[int]]:
        """Encode many texts on all cores (the tokenizers library's own thread pool)."""
        # encode_batch_fast (tokenizers >= 0.20) skips the character offsets, which no caller uses: 25% less CPU
        encode = getattr(self.hf, "encode_batch_fast", self.hf.encode_batch)
        return [e.ids for e in encode(list(texts), add_special_tokens=False)]

    def decode(self, ids: Iterable[int], skip_special_tokens: bool = False) -> str:
        return self._decode(self.hf, ids, skip_special_tokens)

    def _decode(self, hf: Any, ids: Iterable[int], skip_special_tokens: bool = False) -> str:
        """`hf.decode`, but for byte-fallback tokens (`<0xE4>`, SentencePiece's bytes of characters
        out of its vocabulary) each run of them is UTF-8 decoded as Python decodes bytes: an
        incomplete or invalid sequence is one U+FFFD and the characters around it stay. tokenizers'
        ByteFallback turns a whole run into one U+FFFD per byte when any of it is not UTF-8, so a
        completion that stopped inside a character lost the whole characters before it, and the text
        streamed so far was not the start of the final text."""
        ids = [int(i) for i in ids]
        if not self._byte_fallback or not any(i in self._byte_token_ids for i in ids):
            return hf.decode(ids, skip_special_tokens=skip_special_tokens)
        special = set(self.special_ids.values()) if skip_special_tokens else set()
        pieces, run = [], bytearray()
        for idx in ids:
            if idx in special:
                continue
            piece = hf.id_to_token(idx)
            if idx in self._byte_token_ids:
                run.append(int(piece[3:5], 16))
                continue
            if run:
                pieces.append(run.decode("utf-8", errors="replace"))
                run.clear()
            pieces.append(piece)
        if run:
            pieces.append(run.decode("utf-8", errors="replace"))
        return hf.decoder.decode(pieces)

    @cached_property
    def _byte_fallback(self) -> bool:
        """Whether the tokenizer decodes byte tokens `<0xNN>` (a ByteFallback decoder)."""
        decoder = json.loads(self.hf.to_str()).get("decoder") or {}
        parts = decoder.get("decoders", [decoder]) if decoder.get("type") == "Sequence" else [decoder]
        return any(isinstance(part, dict) and part.get("type") == "ByteFallback" for part in parts)

    @cached_property
    def _byte_token_ids(self) -> frozenset[int]:
        vocab = self.hf.get_vocab(with_added_tokens=False)
        return frozenset(idx for piece, idx in vocab.items()
                         if len(piece) == 6 and piece.startswith("<0x") and piece.endswith(">")
                         and all(c in "0123456789ABCDEFabcdef" for c in piece[3:5]))

    def decode_continuation(self, ids: Iterable[int]) -> str:
        """The text of `ids` as they decode right after other text (a completion after its prompt):
        the mirror of `encode_continuation`. A SentencePiece-style decoder drops the space of the
        first "▁word" token, the marker encoding prepended to a text; mid-text that space is
        written, so it is kept here (`prompt + completion` then reads as the ids decoded together).
        Byte-level BPE drops nothing: the same as `decode`."""
        if not hasattr(self, "_continuation_decoder"):
            self._continuation_decoder = _keeping_the_first_space(self.hf)
        return self._decode(self._continuation_decoder, ids)

    def id_to_bytes(self, idx: int) -> bytes:
        """The raw bytes of a token; a special token's bytes are its name in UTF-8."""
        piece = self.hf.id_to_token(int(idx))
        if piece is None:
            raise UserError(f"token id {idx} is outside the vocabulary (0..{self.vocab_size - 1})")
        if piece in self.special_ids:
            return piece.encode()
        return piece_to_bytes(piece)

    def id_to_piece(self, idx: int) -> str:
        """A readable form of one token: its text, with bytes that are not whole UTF-8 characters as \\xNN."""
        return self.id_to_bytes(idx).decode("utf-8", errors="backslashreplace")

    @cached_property
    def fast_encoding(self) -> Any | None:
        """A tiktoken Encoding built from our own merges, or None where it cannot reproduce our ids.

        tiktoken's BPE merges by the rank of the merged token, HF's by the rank of the merge; with
        a byte-level vocabulary whose ids follow merge order the two agree (the tests check it on
        real text and random Unicode), and tiktoken is several times faster. It applies only to
        tokenizers of exactly llmkit's shape; any other tokenizer.json gets None.
        """
        return build_tiktoken_encoding(self.hf)

    def encode_ordinary_batch(self, texts: Sequence[str], num_threads: int = 2) -> list[list[int]]:
        """Encode many texts through the fast path when it applies, else through tokenizers."""
        fast = self.fast_encoding
        if fast is not None:
            return fast.encode_ordinary_batch(list(texts), num_threads=num_threads)
        return self.encode_batch(texts)


def _is_llmkit_shape(config: dict) -> bool:
    model = config.get("model") or {}
    pre = config.get("pre_tokenizer") or {}
    if model.get("type") != "BPE" or config.get("normalizer") is not None:
        return False
    if model.get("dropout") or model.get("continuing_subword_prefix") or model.get("end_of_word_suffix"):
        return False
    steps = pre.get("pretokenizers") if pre.get("type") == "Sequence" else None
    if not steps or len(steps) != 2:
        return False
    split, byte_level = steps
    return (
        split.get("type") == "Split"
        and split.get("pattern", {}).get("Regex") in FAST_SPLITS
        and split.get("behavior") == "Isolated"
        and not split.get("invert")
        and byte_level.get("type") == "ByteLevel"
        and not byte_level.get("add_prefix_space")
        and not byte_level.get("use_regex")
    )


def build_tiktoken_encoding(hf: Any) -> Any | None:
    """tiktoken Encoding with our ids as ranks, or None if the tokenizer is not of llmkit's shape."""
    try:
        import tiktoken
    except ImportError:  # pragma: no cover - tiktoken is a dependency, but the fast path is optional
        return None
    config = json.loads(hf.to_str())
    if not _is_llmkit_shape(config):
        return None
    vocab: dict[str, int] = config["model"]["vocab"]
    specials = {t["content"]: t["id"] for t in config.get("added_tokens", []) if t.get("special")}
    if any(not t.get("special") for t in config.get("added_tokens", [])):
        return None  # non-special added tokens are matched before BPE (tokenizers); tiktoken has no such step
    alphabet = set(bytes_to_unicode().values())
    ranks: dict[bytes, int] = {}
    for piece, idx in vocab.items():
        if piece in specials:
            continue
        if not set(piece) <= alphabet:
            return None
        ranks[byte_level_bytes(piece)] = idx
    if len(ranks) < 256 or any(bytes([b]) not in ranks for b in range(256)):
        return None
    # HF applies merges by their list position; tiktoken by the merged token's rank. The two orders
    # agree only if each merge creates a token whose id grows with the merge's position.
    merged_ids = []
    for merge in config["model"].get("merges", []):
        left, right = merge if isinstance(merge, list) else merge.split(" ", 1)
        merged_ids.append(vocab.get(left + right, -1))
    if any(i < 0 for i in merged_ids) or any(b <= a for a, b in pairwise(merged_ids)):
        return None
    try:
        return tiktoken.Encoding(
            name="llmkit-bpe", pat_str=FAST_SPLITS[config["pre_tokenizer"]["pretokenizers"][0]["pattern"]["Regex"]],
            mergeable_ranks=ranks, special_tokens=specials
        )
    except Exception:  # noqa: BLE001 - any engine error (e.g. the pattern) just means: use the tokenizers path
        return None


def load_tokenizer(dir: Path | str) -> TextTokenizer:
    """Load tokenizer.json + token_bytes.npy from a folder (a tokenizer artifact or a `tokenizer/` copy)."""
    from tokenizers import Tokenizer

    dir = Path(dir)
    if (dir / "manifest.json").is_file() and not (dir / TOKENIZER_FILE).is_file() and (dir / "tokenizer").is_dir():
        dir = dir / "tokenizer"  # a tokens or checkpoint artifact was passed
    for name in TOKENIZER_FILES:
        if not (dir / name).is_file():
            raise UserError(f"no {name} in {dir}; pass a tokenizer artifact (llmkit tokenizer train) or its tokenizer/ copy")
    from llmkit.artifacts import checked_as_read

    open(dir / TOKENIZER_FILE, "rb").close()  # (an unreadable file is a PermissionError, not "not a valid tokenizers file")
    # (the roles and the chat template too: a same-size edit of either changed prompts unsaid)
    beside = [dir / name for name in (SPECIAL_ROLES_FILE, CHAT_TEMPLATE_FILE) if (dir / name).is_file()]
    with checked_as_read(dir / TOKENIZER_FILE, dir / TOKEN_BYTES_FILE, *beside):
        try:
            hf = Tokenizer.from_file(str(dir / TOKENIZER_FILE))
        except Exception as exc:
            raise UserError(f"{dir / TOKENIZER_FILE} is not a valid tokenizers file ({exc}); retrain the tokenizer") from exc
        token_bytes = _token_bytes(dir / TOKEN_BYTES_FILE)
        roles = special_roles(dir)
        end_of_turn = roles.pop(END_OF_TURN, []) if roles is not None else []
        template = None
        if (dir / CHAT_TEMPLATE_FILE).is_file():
            try:
                template = (dir / CHAT_TEMPLATE_FILE).read_text(encoding="utf-8")
            except UnicodeDecodeError as exc:
                raise UserError(f"{dir / CHAT_TEMPLATE_FILE} is not UTF-8 text ({exc}); fix or delete it") from None
    return TextTokenizer(hf, token_bytes, path=dir, roles=roles, end_of_turn=end_of_turn, own_chat_template=template)


def _token_bytes(path: Path) -> np.ndarray:
    """token_bytes.npy: each token's length in bytes, an integer array (never unpickled)."""
    try:
        found = np.load(path, allow_pickle=False)
    except PermissionError:
        raise
    except (OSError, ValueError, EOFError):  # (numpy's own words advise loading it unsafely: not quoted)
        raise UserError(f"{path} is damaged (not an integer array numpy reads); retrain the tokenizer") from None
    if found.ndim != 1 or found.dtype.kind not in "iu":
        raise UserError(f"{path} is damaged (a {found.dtype} array of shape {found.shape}, not integers); retrain the tokenizer")
    return found


END_OF_TURN = "end_of_turn"  # special_tokens.json: the token texts besides eos that end a reply


def special_roles(dir: Path) -> dict[str, Any] | None:
    """A tokenizer folder's special-token roles (special_tokens.json: role -> token text, and
    "end_of_turn": a list of token texts); None without the file (llmkit's own <|bos|>, <|eos|>, ...)."""
    path = Path(dir) / SPECIAL_ROLES_FILE
    if not path.is_file():
        return None
    try:
        roles = json.loads(path.read_text(encoding="utf-8"))
    except (json.JSONDecodeError, UnicodeDecodeError, RecursionError) as exc:
        raise UserError(f"{path} is not valid JSON ({exc}); fix or delete it") from None
    ends = roles.get(END_OF_TURN, []) if isinstance(roles, dict) else None
    named = {k: v for k, v in roles.items() if k != END_OF_TURN} if isinstance(roles, dict) else None
    if (named is None or not all(isinstance(v, str) for v in named.values()) or set(named) - set(LLMKIT_ROLES)
            or not isinstance(ends, list) or not all(isinstance(t, str) for t in ends)):
        raise UserError(f"{path} must map bos/eos/pad/mask to token texts (and {END_OF_TURN} to a list of them); fix or delete it")
    return roles


def same_tokenizer(a: Path | str, b: Path | str) -> bool:
    """Whether two artifacts (tokenizer, tokens or checkpoint: each holds the tokenizer or its
    tokenizer/ copy) encode with the same tokenizer: the same tokenizer.json, byte for byte, and
    the same special-token roles (an imported base model and its instruct tune often share the
    file but not their end-of-sequence token)."""
    from llmkit.artifacts import sha256_file

    def folder_of(folder: Path) -> Path:
        folder = Path(folder)
        return folder if (folder / TOKENIZER_FILE).is_file() else folder / "tokenizer"

    first, second = folder_of(a), folder_of(b)
    if not ((first / TOKENIZER_FILE).is_file() and (second / TOKENIZER_FILE).is_file()):
        return False
    if _scoring_roles(first) != _scoring_roles(second):
        return False
    return sha256_file(first / TOKENIZER_FILE) == sha256_file(second / TOKENIZER_FILE) or \
        _encoding_part(first / TOKENIZER_FILE) == _encoding_part(second / TOKENIZER_FILE)


def _encoding_part(path: Path) -> dict[str, Any] | None:
    """What of a tokenizer.json llmkit encodes with: all of it but the post-processor, which adds
    special tokens only when asked to (llmkit never asks: add_special_tokens=False everywhere). An
    export gives transformers one (the start token); a model re-saved by transformers into a new
    folder comes back with it, the same tokenizer otherwise (2026-12-07 review: its eval of the
    original tokens was refused as "another tokenizer")."""
    import json

    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return None
    if isinstance(data, dict):
        data.pop("post_processor", None)
    return data


def _scoring_roles(folder: Path) -> dict[str, Any] | None:
    """The roles that change what a model is fed and scored on (not where a reply ends)."""
    roles = special_roles(folder)
    return None if roles is None else {k: v for k, v in roles.items() if k != END_OF_TURN}


def copy_tokenizer_files(src_dir: Path | str, dst_dir: Path | str) -> Path:
    """Copy tokenizer.json, token_bytes.npy (and special_tokens.json, if any) into dst_dir (created)."""
    src_dir, dst_dir = Path(src_dir), Path(dst_dir)
    if not (src_dir / TOKENIZER_FILE).is_file() and (src_dir / "tokenizer" / TOKENIZER_FILE).is_file():
        src_dir = src_dir / "tokenizer"  # a tokens or checkpoint artifact was passed
    dst_dir.mkdir(parents=True, exist_ok=True)
    for name in TOKENIZER_FILES:
        if not (src_dir / name).is_file():
            raise UserError(f"no {name} in {src_dir}: the tokenizer is missing or incomplete there; rebuild that artifact, "
                            "or copy the tokenizer artifact's files into it")
        shutil.copyfile(src_dir / name, dst_dir / name)
    for name in (SPECIAL_ROLES_FILE, CHAT_TEMPLATE_FILE):
        if (src_dir / name).is_file():
            shutil.copyfile(src_dir / name, dst_dir / name)
    return dst_dir
