"""Hugging Face transformers interop: llmkit's GPT <-> `GPT2LMHeadModel` / `LlamaForCausalLM`.

Two families map exactly onto llmkit's one Transformer (llmkit/model/gpt.py):

  llmkit ModelConfig                         transformers
  norm=layernorm, pos=learned, act=gelu  ->  GPT2LMHeadModel   (model_type "gpt2")
  norm=rmsnorm,   pos=rope,    act=swiglu ->  LlamaForCausalLM  (model_type "llama")

Anything else (e.g. RMSNorm with learned positions) has no transformers class that computes
the same function, so it is refused rather than approximated. The weight layouts differ in
three ways worth knowing:
  * GPT-2 uses `Conv1D` layers whose weight is [in, out]: every matrix is transposed, and
    q/k/v live in one `c_attn` matrix.
  * llmkit packs k and v in one `kv_proj` ([k rows; v rows]) and gate and up in one `up_proj`
    ([gate rows; up rows]); Llama keeps them as separate matrices.
  * RoPE: llmkit rotates the two halves of each head (x1, x2 = x.chunk(2)), the same convention
    as transformers' `rotate_half`, so q/k rows need no permutation.
GPT-2 has no grouped-query attention: a GQA model exports by repeating each KV head for the
query heads that share it, which computes the same function.

Export writes a transformers directory (config.json, model.safetensors, tokenizer.json +
tokenizer_config.json, generation_config.json); import reads one (safetensors only, never
pickle) and writes a checkpoint artifact (contract 7).
"""

from __future__ import annotations

import contextlib
import json
import math
import re
from dataclasses import dataclass, fields
from pathlib import Path

import numpy as np
import torch

from llmkit.errors import UserError
from llmkit.model.gpt import ModelConfig

SUPPORTED_MODEL_TYPES = ("gpt2", "llama")
GPT2_STYLE = dict(norm="layernorm", pos="learned", activation="gelu")
LLAMA_STYLE = dict(norm="rmsnorm", pos="rope", activation="swiglu")
# transformers activations that are the tanh approximation of GELU llmkit's MLP computes.
GELU_TANH = ("gelu_new", "gelu_pytorch_tanh", "gelu_fast", "gelu_python_tanh")
SILU = ("silu", "swish")
LLMKIT_CONFIG_FILE = "llmkit_model_config.json"  # written on export so a round trip keeps every field
PICKLE_WEIGHTS = ("*.bin", "*.pt", "*.pth", "*.ckpt", "*.pkl")


# ---------------------------------------------------------------------------------------------
# Which transformers family a config is


def hf_family(config: ModelConfig) -> str:
    """"gpt2" or "llama" for a config transformers can run exactly; UserError otherwise."""
    if config.arch != "gpt":
        raise UserError(f"only Transformer checkpoints export to transformers, this one is arch={config.arch!r}")
    if config.objective != "clm":
        raise UserError(
            f"only causal LMs export as transformers CausalLM models, this one has objective={config.objective!r}"
        )
    style = dict(norm=config.norm, pos=config.pos, activation=config.activation)
    if style == GPT2_STYLE:
        return "gpt2"
    if style == LLAMA_STYLE:
        return "llama"
    described = ", ".join(f"{k}={v}" for k, v in style.items())
    raise UserError(
        f"a model with {described} matches neither GPT-2 (layernorm, learned, gelu) nor Llama "
        "(rmsnorm, rope, swiglu), so no transformers class computes it; train with one of those styles to export"
    )


# ---------------------------------------------------------------------------------------------
# Config translation


@dataclass
class SpecialIds:
    bos: int | None = None
    eos: int | None = None
    pad: int | None = None


def to_hf_config(config: ModelConfig, special: SpecialIds | None = None):
    """The transformers config that computes what `GPT(config)` computes."""
    special = special or SpecialIds()
    ids = dict(bos_token_id=special.bos, eos_token_id=special.eos, pad_token_id=special.pad)
    if hf_family(config) == "gpt2":
        from transformers import GPT2Config

        return GPT2Config(
            vocab_size=config.vocab_size,
            n_positions=config.context_length,
            n_embd=config.n_embd,
            n_layer=config.n_layer,
            n_head=config.n_head,
            n_inner=config.mlp_hidden,
            activation_function="gelu_new",
            resid_pdrop=config.dropout,
            embd_pdrop=config.dropout,
            attn_pdrop=config.dropout,
            layer_norm_epsilon=config.norm_eps,
            tie_word_embeddings=config.tie_embeddings,
            architectures=["GPT2LMHeadModel"],
            dtype="float32",
            **ids,
        )
    from transformers import LlamaConfig

    return LlamaConfig(
        vocab_size=config.vocab_size,
        hidden_size=config.n_embd,
        intermediate_size=config.mlp_hidden,
        num_hidden_layers=config.n_layer,
        num_attention_heads=config.n_head,
        num_key_value_heads=config.n_kv_head,
        head_dim=config.head_dim,
        hidden_act="silu",
        max_position_embeddings=config.context_length,
        rms_norm_eps=config.norm_eps,
        rope_parameters={"rope_type": "default", "rope_theta": float(config.rope_theta)},
        attention_bias=config.bias,
        mlp_bias=config.bias,
        attention_dropout=config.dropout,
        tie_word_embeddings=config.tie_embeddings,
        architectures=["LlamaForCausalLM"],
        dtype="float32",
        **ids,
    )


def _unsupported(model_type: str, feature: str, fix: str = "llmkit's GPT cannot express it") -> UserError:
    return UserError(f"{model_type} model with {feature} is not supported: {fix}")


def from_hf_config(hf_config) -> ModelConfig:
    """The llmkit ModelConfig for a transformers GPT-2 or Llama config; UserError naming what
    llmkit's GPT cannot express."""
    model_type = getattr(hf_config, "model_type", None)
    if model_type == "gpt2":
        return _from_gpt2_config(hf_config)
    if model_type == "llama":
        return _from_llama_config(hf_config)
    raise unsupported_model_type(model_type, getattr(hf_config, "architectures", None))


def unsupported_model_type(model_type, architectures=None) -> UserError:
    named = f"model_type {model_type!r}" + (f" ({', '.join(architectures)})" if architectures else "")
    return UserError(
        f"unsupported architecture: {named}; llmkit imports only GPT-2 (model_type gpt2) and "
        "Llama (model_type llama) models"
    )


def _from_gpt2_config(c) -> ModelConfig:
    if c.activation_function not in GELU_TANH:
        raise _unsupported("gpt2", f"activation_function={c.activation_function!r}", "llmkit's GPT uses tanh-approximated GELU")
    if not c.scale_attn_weights or c.scale_attn_by_inverse_layer_idx:
        raise _unsupported("gpt2", "non-standard attention scaling (scale_attn_weights / scale_attn_by_inverse_layer_idx)")
    if getattr(c, "add_cross_attention", False):
        raise _unsupported("gpt2", "cross-attention (add_cross_attention)")
    hidden = c.n_inner if c.n_inner is not None else 4 * c.n_embd
    return config_with_mlp_width(
        dict(
            GPT2_STYLE,
            vocab_size=c.vocab_size,
            context_length=c.n_positions,
            n_layer=c.n_layer,
            n_head=c.n_head,
            n_kv_head=c.n_head,
            n_embd=c.n_embd,
            bias=True,
            tie_embeddings=bool(c.tie_word_embeddings),
            norm_eps=float(c.layer_norm_epsilon),
        ),
        hidden,
        "gpt2",
    )


def _from_llama_config(c) -> ModelConfig:
    if c.hidden_act not in SILU:
        raise _unsupported("llama", f"hidden_act={c.hidden_act!r}", "llmkit's SwiGLU uses SiLU")
    head_dim = getattr(c, "head_dim", None) or c.hidden_size // c.num_attention_heads
    if head_dim * c.num_attention_heads != c.hidden_size:
        raise _unsupported("llama", f"head_dim={head_dim} != hidden_size / num_attention_heads", "llmkit derives head size as n_embd / n_head")
    for name in ("sliding_window", "attention_chunk_size"):
        if getattr(c, name, None):
            raise _unsupported("llama", f"{name}={getattr(c, name)}", "llmkit's attention is full causal attention")
    rope = getattr(c, "rope_parameters", None) or {}
    rope_type = rope.get("rope_type", rope.get("type", "default"))
    if rope_type != "default":
        raise _unsupported("llama", f"RoPE scaling {rope_type!r}", "llmkit implements plain RoPE only")
    if rope.get("partial_rotary_factor", 1.0) != 1.0:
        raise _unsupported("llama", f"partial_rotary_factor={rope['partial_rotary_factor']}", "llmkit rotates the whole head")
    theta = rope.get("rope_theta", getattr(c, "rope_theta", None)) or 10000.0
    return config_with_mlp_width(
        dict(
            LLAMA_STYLE,
            vocab_size=c.vocab_size,
            context_length=c.max_position_embeddings,
            n_layer=c.num_hidden_layers,
            n_head=c.num_attention_heads,
            n_kv_head=c.num_key_value_heads or c.num_attention_heads,
            n_embd=c.hidden_size,
            # One bias flag in llmkit: a Llama with bias in attention but not MLP (or the reverse)
            # imports with zero biases where it had none, which computes the same function.
            bias=bool(c.attention_bias or getattr(c, "mlp_bias", False)),
            tie_embeddings=bool(c.tie_word_embeddings),
            norm_eps=float(c.rms_norm_eps),
            rope_theta=float(theta),
        ),
        c.intermediate_size,
        "llama",
    )


def config_with_mlp_width(values: dict, mlp_hidden: int, model_type: str) -> ModelConfig:
    """ModelConfig whose MLP width is exactly `mlp_hidden`.

    ModelConfig derives the width from `mlp_ratio` (SwiGLU: 2/3 of it, rounded up to a multiple
    of 64 from 64 on), so find a ratio that lands on the wanted width and check it does.
    """
    known = {f.name for f in fields(ModelConfig)}
    if "mlp_hidden_size" in known:  # an explicit width, when ModelConfig has one
        values["mlp_hidden_size"] = mlp_hidden
    n_embd = values["n_embd"]
    swiglu = values["activation"] == "swiglu"
    # The pre-rounding width h with int(2h/3) == mlp_hidden is ceil(1.5 * mlp_hidden).
    wanted = math.ceil(1.5 * mlp_hidden) if swiglu else mlp_hidden
    candidates = [wanted / n_embd]
    candidates += [math.nextafter(candidates[0], math.inf), (wanted + 0.5) / n_embd]
    for ratio in candidates:
        try:
            config = ModelConfig(**values, mlp_ratio=ratio)
        except ValueError as exc:
            raise _unsupported(model_type, str(exc)) from exc
        if config.mlp_hidden == mlp_hidden:
            return config
    raise _unsupported(
        model_type,
        f"MLP width {mlp_hidden}",
        "llmkit's SwiGLU widths from 64 on are multiples of 64",
    )


# ---------------------------------------------------------------------------------------------
# Weight mapping


def _t(x: torch.Tensor) -> torch.Tensor:
    return x.detach().to(torch.float32).clone().contiguous()


def _expand_kv(w: torch.Tensor, config: ModelConfig) -> torch.Tensor:
    """Repeat each KV head's rows for the query heads sharing it (GQA -> multi-head)."""
    groups = config.n_head // config.n_kv_head
    if groups == 1:
        return w
    rows = w.reshape(config.n_kv_head, config.head_dim, *w.shape[1:])
    return rows.repeat_interleave(groups, dim=0).reshape(config.n_head * config.head_dim, *w.shape[1:])


def to_hf_state(state: dict[str, torch.Tensor], config: ModelConfig) -> dict[str, torch.Tensor]:
    """llmkit GPT state dict -> transformers state dict (tied lm_head left out, as transformers saves it)."""
    family = hf_family(config)
    out: dict[str, torch.Tensor] = {}
    kv = config.n_kv_head * config.head_dim
    hidden = config.mlp_hidden

    def get(name: str, default_like: torch.Tensor | None = None) -> torch.Tensor:
        if name in state:
            return state[name]
        if default_like is not None:  # llmkit without bias -> zero bias in GPT-2, which always has one
            return torch.zeros(default_like.shape[0], dtype=default_like.dtype)
        raise UserError(f"checkpoint weights lack {name!r}; the checkpoint is damaged, rebuild it")

    if family == "gpt2":
        out["transformer.wte.weight"] = get("tok_emb.weight")
        out["transformer.wpe.weight"] = get("pos_emb.weight")
        for i in range(config.n_layer):
            b, h = f"blocks.{i}.", f"transformer.h.{i}."
            for ours, theirs in (("attn_norm", "ln_1"), ("mlp_norm", "ln_2")):
                w = get(b + ours + ".weight")
                out[h + theirs + ".weight"] = w
                out[h + theirs + ".bias"] = get(b + ours + ".bias", w)
            wq, wkv = get(b + "attn.q_proj.weight"), get(b + "attn.kv_proj.weight")
            wk, wv = _expand_kv(wkv[:kv], config), _expand_kv(wkv[kv:], config)
            out[h + "attn.c_attn.weight"] = torch.cat([wq, wk, wv], dim=0).t()  # Conv1D is [in, out]
            bq, bkv = get(b + "attn.q_proj.bias", wq), get(b + "attn.kv_proj.bias", wkv)
            out[h + "attn.c_attn.bias"] = torch.cat([bq, _expand_kv(bkv[:kv], config), _expand_kv(bkv[kv:], config)])
            for ours, theirs in (("attn.out_proj", "attn.c_proj"), ("mlp.up_proj", "mlp.c_fc"), ("mlp.down_proj", "mlp.c_proj")):
                w = get(b + ours + ".weight")
                out[h + theirs + ".weight"] = w.t()
                out[h + theirs + ".bias"] = get(b + ours + ".bias", w)
        out["transformer.ln_f.weight"] = w = get("final_norm.weight")
        out["transformer.ln_f.bias"] = get("final_norm.bias", w)
    else:
        out["model.embed_tokens.weight"] = get("tok_emb.weight")
        for i in range(config.n_layer):
            b, h = f"blocks.{i}.", f"model.layers.{i}."
            out[h + "input_layernorm.weight"] = get(b + "attn_norm.weight")
            out[h + "post_attention_layernorm.weight"] = get(b + "mlp_norm.weight")
            params = ("weight", "bias") if config.bias else ("weight",)
            for p in params:
                out[h + f"self_attn.q_proj.{p}"] = get(b + f"attn.q_proj.{p}")
                wkv = get(b + f"attn.kv_proj.{p}")
                out[h + f"self_attn.k_proj.{p}"], out[h + f"self_attn.v_proj.{p}"] = wkv[:kv], wkv[kv:]
                out[h + f"self_attn.o_proj.{p}"] = get(b + f"attn.out_proj.{p}")
                up = get(b + f"mlp.up_proj.{p}")
                out[h + f"mlp.gate_proj.{p}"], out[h + f"mlp.up_proj.{p}"] = up[:hidden], up[hidden:]
                out[h + f"mlp.down_proj.{p}"] = get(b + f"mlp.down_proj.{p}")
        out["model.norm.weight"] = get("final_norm.weight")
    if not config.tie_embeddings:
        out["lm_head.weight"] = get("lm_head.weight")
    return {k: _t(v) for k, v in out.items()}


# Keys transformers checkpoints carry that are not learned weights (old causal-mask buffers,
# cached rotary tables): skipped on import.
_NON_WEIGHTS = re.compile(r"(\.attn\.(masked_)?bias$|rotary_emb\.inv_freq$)")


def normalize_hf_keys(state: dict[str, torch.Tensor], model_type: str) -> dict[str, torch.Tensor]:
    """Give every key the CausalLM prefix (a base `GPT2Model`/`LlamaModel` saves without it) and
    drop non-weights."""
    prefix = "transformer." if model_type == "gpt2" else "model."
    out = {}
    for key, value in state.items():
        if _NON_WEIGHTS.search(key):
            continue
        if not key.startswith((prefix, "lm_head.")):
            key = prefix + key
        out[key] = value
    return out


def from_hf_state(hf_state: dict[str, torch.Tensor], config: ModelConfig, model_type: str) -> dict[str, torch.Tensor]:
    """transformers state dict (normalized keys) -> llmkit GPT state dict. Every transformers
    weight must be used: an unknown one means a feature llmkit's GPT does not have."""
    state = dict(hf_state)
    out: dict[str, torch.Tensor] = {}
    missing: list[str] = []

    def take(name: str, zeros: int | None = None) -> torch.Tensor | None:
        if name in state:
            return state.pop(name)
        if zeros is not None:
            return torch.zeros(zeros)
        missing.append(name)
        return None

    if model_type == "gpt2":
        C = config.n_embd
        out["tok_emb.weight"] = take("transformer.wte.weight")
        out["pos_emb.weight"] = take("transformer.wpe.weight")
        for i in range(config.n_layer):
            b, h = f"blocks.{i}.", f"transformer.h.{i}."
            for ours, theirs in (("attn_norm", "ln_1"), ("mlp_norm", "ln_2")):
                out[b + ours + ".weight"] = take(h + theirs + ".weight")
                out[b + ours + ".bias"] = take(h + theirs + ".bias")
            w, bias = take(h + "attn.c_attn.weight"), take(h + "attn.c_attn.bias")
            if w is not None:
                w = w.t()
                out[b + "attn.q_proj.weight"], out[b + "attn.kv_proj.weight"] = w[:C], w[C:]
            if bias is not None:
                out[b + "attn.q_proj.bias"], out[b + "attn.kv_proj.bias"] = bias[:C], bias[C:]
            for ours, theirs in (("attn.out_proj", "attn.c_proj"), ("mlp.up_proj", "mlp.c_fc"), ("mlp.down_proj", "mlp.c_proj")):
                w = take(h + theirs + ".weight")
                out[b + ours + ".weight"] = None if w is None else w.t()
                out[b + ours + ".bias"] = take(h + theirs + ".bias")
        out["final_norm.weight"] = take("transformer.ln_f.weight")
        out["final_norm.bias"] = take("transformer.ln_f.bias")
    else:
        kv_rows = config.n_kv_head * config.head_dim
        for_bias = {  # zero bias where the Llama had none but llmkit's single bias flag is on
            "q_proj": config.n_embd, "k_proj": kv_rows, "v_proj": kv_rows, "o_proj": config.n_embd,
            "gate_proj": config.mlp_hidden, "up_proj": config.mlp_hidden, "down_proj": config.n_embd,
        }
        out["tok_emb.weight"] = take("model.embed_tokens.weight")
        for i in range(config.n_layer):
            b, h = f"blocks.{i}.", f"model.layers.{i}."
            out[b + "attn_norm.weight"] = take(h + "input_layernorm.weight")
            out[b + "mlp_norm.weight"] = take(h + "post_attention_layernorm.weight")
            for p in ("weight", "bias") if config.bias else ("weight",):
                def part(name: str) -> torch.Tensor | None:
                    return take(h + name + "." + p, zeros=for_bias[name.split(".")[-1]] if p == "bias" else None)

                out[b + f"attn.q_proj.{p}"] = part("self_attn.q_proj")
                k, v = part("self_attn.k_proj"), part("self_attn.v_proj")
                out[b + f"attn.kv_proj.{p}"] = None if k is None or v is None else torch.cat([k, v])
                out[b + f"attn.out_proj.{p}"] = part("self_attn.o_proj")
                gate, up = part("mlp.gate_proj"), part("mlp.up_proj")
                out[b + f"mlp.up_proj.{p}"] = None if gate is None or up is None else torch.cat([gate, up])
                out[b + f"mlp.down_proj.{p}"] = part("mlp.down_proj")
        out["final_norm.weight"] = take("model.norm.weight")
    if config.tie_embeddings:
        state.pop("lm_head.weight", None)  # some tied checkpoints store the copy anyway
    else:
        out["lm_head.weight"] = take("lm_head.weight")
    if missing:
        raise UserError(
            f"the {model_type} weights lack {len(missing)} tensor(s) its config.json needs (e.g. {missing[0]!r}); "
            "the model directory is incomplete, re-save it with save_pretrained"
        )
    if state:
        extra = sorted(state)
        raise UserError(
            f"the {model_type} weights hold {len(extra)} tensor(s) llmkit's GPT has no place for (e.g. {extra[0]!r}); "
            "this variant is not supported"
        )
    return {k: _t(v) for k, v in out.items()}


# ---------------------------------------------------------------------------------------------
# Tokenizer helpers




def token_byte_lengths(tokenizer) -> np.ndarray:
    """UTF-8 byte length of every token (int32 [vocab]); 0 for special tokens.

    Byte-level BPE pieces are decoded through GPT-2's byte alphabet; SentencePiece-style pieces
    (Llama) count "▁" as a space and `<0xNN>` byte-fallback pieces as one byte.
    """
    from llmkit.data.tokenizer import piece_to_bytes

    vocab_size = tokenizer.get_vocab_size(with_added_tokens=True)
    specials = {t.content for t in tokenizer.get_added_tokens_decoder().values() if t.special}
    lengths = np.zeros(vocab_size, dtype=np.int32)
    for piece, index in tokenizer.get_vocab(with_added_tokens=True).items():
        if piece not in specials and index < vocab_size:
            lengths[index] = len(piece_to_bytes(piece))
    return lengths


# ---------------------------------------------------------------------------------------------
# Writing a directory atomically (export output is a transformers folder, not an artifact)


def _atomic_dir(out: Path, force: bool, inputs: list[Path]):
    from llmkit.artifacts import atomic_directory

    return atomic_directory(out, force=force, inputs=inputs)


# ---------------------------------------------------------------------------------------------
# Export: checkpoint artifact -> transformers directory

DTYPES = {"float32": torch.float32, "bfloat16": torch.bfloat16, "float16": torch.float16}
HF_WEIGHTS = "model.safetensors"
HF_INDEX = "model.safetensors.index.json"


def _dtype(name: str) -> torch.dtype:
    if name not in DTYPES:
        raise UserError(f"unknown dtype {name!r}; choose one of: {', '.join(DTYPES)}")
    return DTYPES[name]


def export_hf(checkpoint: Path | str, out: Path | str, *, force: bool = False, dtype: str = "float32") -> Path:
    """Write a checkpoint as a transformers model directory that `AutoModelForCausalLM` and
    `AutoTokenizer.from_pretrained(out)` load offline. Returns `out`."""
    from safetensors.torch import save_file
    from transformers import GenerationConfig

    from llmkit import artifacts
    from llmkit.generate.prompts import document_start_id
    from llmkit.model.io import load_checkpoint, read_model_config
    from llmkit.model.records import read_task

    out = artifacts.check_output(out, force, inputs=[checkpoint])
    torch_dtype = _dtype(dtype)
    art = artifacts.load(checkpoint, kind="checkpoint")
    family = hf_family(read_model_config(art.path))  # refuse before loading any weights
    task = read_task(art)
    if task is not None and task.is_classifier:
        raise UserError(
            f"{art.path} is a classification checkpoint; its head has a bias that transformers' "
            "*ForSequenceClassification `score` layer lacks, so it does not export; export the checkpoint it was fine-tuned from"
        )
    loaded = load_checkpoint(art.path)
    config, tok = loaded.config, loaded.tokenizer
    template = chat_template_for(task)
    special = SpecialIds(bos=tok.bos_id, eos=tok.eos_id, pad=tok.pad_id)
    hf_config = to_hf_config(config, special)
    hf_config.dtype = dtype
    state = {k: v.to(torch_dtype) for k, v in to_hf_state(loaded.model.state_dict(), config).items()}
    with _atomic_dir(out, force, [checkpoint]) as tmp:
        hf_config.save_pretrained(tmp)
        if family == "llama":  # transformers 4.x reads the RoPE base from the top level; v5 accepts both
            _update_json(tmp / "config.json", rope_theta=float(config.rope_theta))
        save_file(state, str(tmp / HF_WEIGHTS), metadata={"format": "pt"})
        stops = stop_token_ids(tok, chat=template == CHAT_TEMPLATE)
        GenerationConfig(
            bos_token_id=special.bos, eos_token_id=stops if len(stops) > 1 else stops[0], pad_token_id=special.pad
        ).save_pretrained(tmp)
        start_id = document_start_id(tok, art, task)
        save_hf_tokenizer(tok, tmp, model_max_length=config.context_length, chat_template=template, start_id=start_id)
        provenance = {"model_config": config.to_dict(), "checkpoint_fingerprint": art.fingerprint,
                      "task": json.loads(task.to_json()) if task is not None else None,
                      "document_start": "eos" if start_id == tok.eos_id and start_id != tok.bos_id else "bos"}
        (tmp / LLMKIT_CONFIG_FILE).write_text(json.dumps(provenance, indent=2, sort_keys=True) + "\n", encoding="utf-8")
    return out


def _update_json(path: Path, **values) -> None:
    data = json.loads(path.read_text(encoding="utf-8"))
    data.update(values)
    path.write_text(json.dumps(data, indent=2, sort_keys=True) + "\n", encoding="utf-8")


# Fine-tuned checkpoints carry their prompt format in task.json (llmkit/data/templates.py);
# as a Jinja chat template, `tokenizer.apply_chat_template` renders what llmkit renders.
# chat: [BOS] (<|role|> text)*, then <|assistant|> to prompt an answer, or EOS after a finished
# conversation (as in training); a role token ends a turn, so role tokens are stop ids too.
CHAT_ROLE_TOKENS = ("<|system|>", "<|user|>", "<|assistant|>")
CHAT_TEMPLATE = (
    "{{ bos_token }}{% for message in messages %}"
    "{% if message['role'] not in ['system', 'user', 'assistant'] %}"
    "{{ raise_exception('llmkit chats have system, user and assistant roles only') }}{% endif %}"
    "{{ '<|' + message['role'] + '|>' + message['content'] }}{% endfor %}"
    "{% if add_generation_prompt %}{{ '<|assistant|>' }}"
    "{% elif messages and messages[-1]['role'] == 'assistant' %}{{ eos_token }}{% endif %}"
)


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
    if template.get("type") == "chat":
        return CHAT_TEMPLATE
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
        "{% if message['role'] == 'user' %}" + prompt + "{% elif message['role'] == 'assistant' %}" + response
        + "{{ eos_token }}{% else %}{{ raise_exception('this model takes user and assistant messages only') }}"
        "{% endif %}{% endfor %}"
    )


def stop_token_ids(tok, chat: bool) -> list[int]:
    """End of text, and for chat models the role tokens that end a turn (llmkit's chat stops on them)."""
    ids = [tok.eos_id]
    if chat:
        ids += [tok.special_ids[t] for t in CHAT_ROLE_TOKENS if t in tok.special_ids]
    return list(dict.fromkeys(ids))


def save_hf_tokenizer(tok, directory: Path, *, model_max_length: int, chat_template: str | None = None,
                      start_id: int | None = None) -> None:
    """tokenizer.json + tokenizer_config.json for `AutoTokenizer`, special tokens by role.

    `start_id`, the token the model saw before every document (llmkit.generate.prompts.
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
    named = set(roles.values())
    extra = [name for name, _ in sorted(tok.special_ids.items(), key=lambda item: item[1]) if name not in named]
    # A copy: llmkit's loader switches the live object to encode special-token text as text,
    # while transformers tokenizers parse it (chat templates rely on that).
    backend = Tokenizer.from_str(tok.hf.to_str())
    if start_id is not None:
        start = tok.hf.id_to_token(start_id)
        backend.post_processor = TemplateProcessing(single=f"{start} $A", pair=f"{start} $A $B:1", special_tokens=[(start, start_id)])
    fast = PreTrainedTokenizerFast(
        tokenizer_object=backend, model_max_length=model_max_length, additional_special_tokens=extra, **roles
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


# ---------------------------------------------------------------------------------------------
# Import: transformers directory -> checkpoint artifact


def _read_config_json(src: Path) -> dict:
    if not src.exists():
        raise UserError(f"no such directory: {src}; pass a local Hugging Face model directory")
    if not src.is_dir():
        raise UserError(f"{src} is a file; pass a local Hugging Face model directory (config.json + *.safetensors)")
    path = src / "config.json"
    if not path.is_file():
        raise UserError(f"{src} has no config.json; it is not a Hugging Face model directory (save one with save_pretrained)")
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except (json.JSONDecodeError, UnicodeDecodeError) as exc:
        raise UserError(f"{path} is not valid JSON ({exc}); re-save the model with save_pretrained") from exc
    if not isinstance(data, dict):
        raise UserError(f"{path} does not hold a JSON object; re-save the model with save_pretrained")
    return data


def weight_files(src: Path) -> list[Path]:
    """The safetensors files of a transformers directory (sharded or not); pickle is refused."""
    index = src / HF_INDEX
    if index.is_file():
        try:
            names = sorted(set(json.loads(index.read_text(encoding="utf-8"))["weight_map"].values()))
        except (json.JSONDecodeError, KeyError, TypeError) as exc:
            raise UserError(f"{index} is not a valid safetensors index ({exc}); re-save the model") from exc
        missing = [n for n in names if not (src / n).is_file()]
        if missing:
            raise UserError(f"{src} lacks weight shard {missing[0]} named in {HF_INDEX}; copy the whole model directory")
        return [src / n for n in names]
    if (src / HF_WEIGHTS).is_file():
        return [src / HF_WEIGHTS]
    pickled = sorted(p.name for pattern in PICKLE_WEIGHTS for p in src.glob(pattern))
    if pickled:
        raise UserError(
            f"{src} has only pickle weights ({pickled[0]}), which llmkit never loads (unpickling can run code); "
            "convert them to safetensors first, e.g. model.save_pretrained(dir, safe_serialization=True) in a trusted environment"
        )
    raise UserError(f"{src} has no {HF_WEIGHTS}; save the model with save_pretrained (safetensors)")


def read_hf_state(files: list[Path]) -> dict[str, torch.Tensor]:
    from safetensors import SafetensorError
    from safetensors.torch import load_file

    state: dict[str, torch.Tensor] = {}
    for path in files:
        try:
            state.update(load_file(str(path)))
        except (SafetensorError, OSError) as exc:
            raise UserError(f"cannot read {path} as safetensors ({exc}); re-save the model") from exc
    return state


def read_hf_tokenizer(src: Path):
    """The fast (tokenizers) tokenizer of a transformers directory: tokenizer.json, or the slow
    files (vocab.json + merges.txt, ...) converted by transformers."""
    from tokenizers import Tokenizer

    path = src / "tokenizer.json"
    if path.is_file():
        try:
            return Tokenizer.from_file(str(path))
        except Exception as exc:
            raise UserError(f"{path} is not a valid tokenizers file ({exc}); re-save the tokenizer") from exc
    try:
        from transformers import AutoTokenizer

        fast = AutoTokenizer.from_pretrained(str(src), local_files_only=True)
        return fast.backend_tokenizer
    except Exception as exc:
        raise UserError(
            f"{src} has no tokenizer.json and its tokenizer files could not be converted ({type(exc).__name__}); "
            "save the tokenizer there with AutoTokenizer(...).save_pretrained"
        ) from exc


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
        with contextlib.suppress(json.JSONDecodeError, UnicodeDecodeError):
            settings = json.loads(settings_path.read_text(encoding="utf-8"))
    specials = {t.content for t in tokenizer.get_added_tokens_decoder().values() if t.special}
    roles: dict[str, str] = {}
    for role in ("bos", "eos", "pad", "mask"):
        value = settings.get(f"{role}_token")
        if isinstance(value, dict):  # an AddedToken written out
            value = value.get("content")
        if not isinstance(value, str):
            index = config_json.get(f"{role}_token_id")
            if isinstance(index, list):
                index = index[0] if index else None
            value = tokenizer.id_to_token(index) if isinstance(index, int) else None
        if value is None and LLMKIT_ROLES[role] in specials:
            value = LLMKIT_ROLES[role]
        if value is not None and value in specials:
            roles[role] = value
    if "eos" not in roles:
        raise UserError(
            f"cannot tell which token of {src}'s tokenizer ends a text (no eos_token in tokenizer_config.json, "
            "no eos_token_id in config.json); add one there"
        )
    roles.setdefault("bos", roles["eos"])
    roles.setdefault("pad", roles["eos"])
    return roles


def write_tokenizer_folder(tokenizer, roles: dict[str, str], folder: Path, src: Path) -> None:
    """tokenizer.json + token_bytes.npy, and special_tokens.json when the roles are not llmkit's
    names (the shared loader reads it); then load the folder the way every stage will."""
    from llmkit.data.tokenizer import LLMKIT_ROLES, SPECIAL_ROLES_FILE, load_tokenizer

    folder.mkdir(parents=True, exist_ok=True)
    tokenizer.save(str(folder / "tokenizer.json"))
    np.save(folder / "token_bytes.npy", token_byte_lengths(tokenizer), allow_pickle=False)
    if any(token != LLMKIT_ROLES[role] for role, token in roles.items()):
        (folder / SPECIAL_ROLES_FILE).write_text(json.dumps(roles, indent=2, sort_keys=True) + "\n", encoding="utf-8")
    loaded = load_tokenizer(folder)
    if (loaded.bos_id, loaded.eos_id, loaded.pad_id) != tuple(tokenizer.token_to_id(roles[r]) for r in ("bos", "eos", "pad")):
        raise AssertionError(f"the tokenizer loader misreads the special-token roles {roles} of {src}")


def _prefer_original_config(src: Path, imported: ModelConfig, state: dict[str, torch.Tensor]):
    """A directory llmkit exported carries the original ModelConfig: use it when it describes
    the same network, so export -> import gives back the config field for field. A bias-free
    GPT-2-style model came out with zero biases (GPT-2 always has them): drop them again."""
    try:
        original = ModelConfig.from_dict(_export_provenance(src)["model_config"])
    except (KeyError, TypeError, ValueError):
        return imported, state
    same = ("vocab_size", "context_length", "n_layer", "n_embd", "norm", "pos", "activation", "tie_embeddings",
            "rope_theta", "norm_eps", "n_head")
    if original.mlp_hidden != imported.mlp_hidden or any(getattr(original, f) != getattr(imported, f) for f in same):
        return imported, state
    if original.n_kv_head != imported.n_kv_head or original.bias and not imported.bias:
        return imported, state  # GPT-2 export repeated the KV heads: keep the multi-head form
    if not original.bias and imported.bias:  # every bias (linear and LayerNorm) follows `bias`
        biases = [k for k in state if k.endswith(".bias")]
        if any(bool(state[k].any()) for k in biases):
            return imported, state  # trained biases since: they are part of the model now
        state = {k: v for k, v in state.items() if not k.endswith(".bias")}
    return original, state


def _export_provenance(src: Path) -> dict:
    """What llmkit's export wrote beside the HF files (the original ModelConfig, the document
    start, ...); {} for a folder llmkit did not export, or an unreadable file."""
    try:
        data = json.loads((src / LLMKIT_CONFIG_FILE).read_text(encoding="utf-8"))
    except (OSError, json.JSONDecodeError):
        return {}
    return data if isinstance(data, dict) else {}


def import_hf(src: Path | str, out: Path | str, *, force: bool = False, seed: int = 0, dtype: str = "float32") -> Path:
    """Turn a local transformers GPT-2 or Llama directory into a checkpoint artifact. Returns `out`."""
    from llmkit import artifacts
    from llmkit.model.gpt import GPT
    from llmkit.model.io import TOKENIZER_DIR, check_shapes, save_weights, tied_names
    from llmkit.model.records import CheckpointStats

    src = Path(src)
    out = artifacts.check_output(out, force, inputs=[src])
    torch_dtype = _dtype(dtype)
    config_json = _read_config_json(src)
    model_type = config_json.get("model_type")
    if model_type not in SUPPORTED_MODEL_TYPES:
        raise unsupported_model_type(model_type, config_json.get("architectures"))
    files = weight_files(src)
    tokenizer = read_hf_tokenizer(src)
    try:
        from transformers import AutoConfig

        hf_config = AutoConfig.from_pretrained(str(src), local_files_only=True)
    except Exception as exc:
        raise UserError(f"{src}/config.json is not a valid {model_type} config ({exc}); re-save the model") from exc
    config = from_hf_config(hf_config)
    tok_vocab = tokenizer.get_vocab_size(with_added_tokens=True)
    if tok_vocab > config.vocab_size:
        raise UserError(
            f"the tokenizer in {src} has {tok_vocab} tokens but the model only {config.vocab_size} embeddings; "
            "the directory mixes a model and a tokenizer that do not belong together"
        )
    special = hf_special_tokens(src, config_json, tokenizer)
    state = from_hf_state(normalize_hf_keys(read_hf_state(files), model_type), config, model_type)
    config, state = _prefer_original_config(src, config, state)
    with torch.device("meta"):  # names and shapes only: the weights are the source's, so none is initialised
        model = GPT(config)
    expected = model.state_dict()
    missing = set(expected) - set(state) - tied_names(model)
    unexpected = set(state) - set(expected)
    if missing or unexpected:
        raise AssertionError(f"hf.py mapping bug: missing {sorted(missing)}, unexpected {sorted(unexpected)}")
    check_shapes(model, state, src, config_file="config.json", fix="re-save the model")
    with artifacts.create(out, "checkpoint", force=force, inputs=[src]) as build:
        save_weights(model, build.dir, {k: state[k].to(torch_dtype) for k in expected if k in state})
        write_tokenizer_folder(tokenizer, special, build.dir / TOKENIZER_DIR, src)
        build.config = {
            "source": "huggingface",
            "model_type": model_type,
            "architectures": config_json.get("architectures") or [],
            "dtype": dtype,
            "model": config.to_dict(),
            "special_tokens": special,
        }
        build.seed = seed
        build.stats = CheckpointStats(params=model.num_params(), vocab_size=config.vocab_size, tokenizer_vocab_size=tok_vocab,
                                      document_start=_export_provenance(src).get("document_start")).to_dict()
    return out
