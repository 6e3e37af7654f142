"""Hugging Face transformers configs <-> llmkit's ModelConfig (llmkit/model/gpt.py).

Two families map exactly onto llmkit's one Transformer:

  llmkit ModelConfig                         transformers
  norm=layernorm, pos=learned, act=gelu  ->  GPT2LMHeadModel   (model_type "gpt2")
  norm=rmsnorm,   pos=rope,    act=swiglu ->  LlamaForCausalLM  (model_type "llama")

Anything else (e.g. RMSNorm with learned positions) has no transformers class that computes
the same function, so it is refused rather than approximated. Used by `llmkit export`/`import`
(llmkit/interop/) and by `llmkit plan --hf-config`; the weights' mapping is hf_weights.py.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, fields

from llmkit.errors import UserError
from llmkit.model.gpt import ModelConfig

SUPPORTED_MODEL_TYPES = ("gpt2", "llama")
GPT2_STYLE = dict(norm="layernorm", pos="learned", activation="gelu")
LLAMA_STYLE = dict(norm="rmsnorm", pos="rope", activation="swiglu")
# transformers activations that are the tanh approximation of GELU llmkit's MLP computes.
GELU_TANH = ("gelu_new", "gelu_pytorch_tanh", "gelu_fast", "gelu_python_tanh")
SILU = ("silu", "swish")


# ---------------------------------------------------------------------------------------------
# Which transformers family a config is


def hf_family(config: ModelConfig) -> str:
    """"gpt2" or "llama" for a config transformers can run exactly; UserError otherwise."""
    if config.arch != "gpt":
        raise UserError(f"only Transformer checkpoints export to transformers, this one is arch={config.arch!r}; use it with "
                        "llmkit generate and eval, or pretrain a Transformer (--arch gpt) to export")
    if config.objective != "clm":
        raise UserError(
            f"only causal LMs export as transformers CausalLM models, this one has objective={config.objective!r}; fine-tune "
            "a classifier from it with llmkit finetune --task classify, or pretrain with --objective clm to export"
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


# transformers classes with another head than a language model's: their weights have no lm_head
NOT_A_LANGUAGE_MODEL = ("ForSequenceClassification", "ForTokenClassification", "ForQuestionAnswering")


def refuse_other_heads(architectures) -> None:
    """A classifier or tagger saved by transformers, refused by its class (its missing lm_head
    would otherwise be reported as an incomplete folder)."""
    for name in _as_list(architectures):
        if isinstance(name, str) and name.endswith(NOT_A_LANGUAGE_MODEL):
            raise UserError(f"config.json's architectures is {name}, a model with a task head; llmkit imports causal language "
                            "models (*ForCausalLM, GPT2LMHeadModel) or their base model: import the language model, then "
                            "`llmkit finetune --task classify` for a classifier")


def _as_list(architectures) -> list:
    """config.json's architectures: a list of class names; one written as a string (by hand) is one name."""
    if isinstance(architectures, str):
        return [architectures]
    return list(architectures) if isinstance(architectures, (list, tuple)) else []


def unsupported_model_type(model_type, architectures=None) -> UserError:
    classes = [str(name) for name in _as_list(architectures)]
    if model_type is None:
        guess = next((kind for kind, prefix in (("gpt2", "GPT2"), ("llama", "Llama")) if any(n.startswith(prefix) for n in classes)), None)
        hint = f"add \"model_type\": \"{guess}\" to it" if guess else "add the model_type of its architecture (gpt2 or llama)"
        named = f" (architectures: {', '.join(classes)})" if classes else ""
        return UserError(f"config.json has no model_type{named}; {hint}")
    named = f"model_type {model_type!r}" + (f" ({', '.join(classes)})" if classes else "")
    return UserError(
        f"unsupported architecture: {named}; llmkit imports only GPT-2 (model_type gpt2) and "
        "Llama (model_type llama) models"
    )


# The keys of a config.json that give a model's shape. transformers fills a missing one with its
# default (a 7B Llama's 32 layers), so a config without them read as another model and import
# blamed the weights for it.
SHAPE_KEYS = {"gpt2": ("vocab_size", "n_positions", "n_layer", "n_head", "n_embd"),
              "llama": ("vocab_size", "max_position_embeddings", "num_hidden_layers", "num_attention_heads", "hidden_size",
                        "intermediate_size")}


def _gpt2_dropout(c) -> float:
    """llmkit's one dropout rate (attention, residual and embedding, as GPT-2's three) from GPT-2's
    three: where they differ, the residual one, which most of llmkit's dropout sites are."""
    return float(getattr(c, "resid_pdrop", 0.0) or 0.0)


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
            dropout=_gpt2_dropout(c),
        ),
        hidden,
        "gpt2",
    )


def hf_bias_groups(c) -> tuple[str, ...]:
    """The layer groups of a transformers Llama config whose linear layers have biases
    (attention_bias, mlp_bias): the weights' other biases are not read (from_hf_state)."""
    flags = (("self_attn", getattr(c, "attention_bias", False)), ("mlp", getattr(c, "mlp_bias", False)))
    return tuple(group for group, on in flags if on)


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
    if isinstance(theta, bool) or not isinstance(theta, (int, float)) or not 0 < theta < math.inf:
        raise UserError(f"config.json: rope_theta must be a positive number, got {theta!r}; correct it or re-save the model")
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
            # (Llama's dropout is attention's alone; llmkit's one rate drops residuals and embeddings too)
            dropout=float(getattr(c, "attention_dropout", 0.0) or 0.0),
        ),
        c.intermediate_size,
        "llama",
    )


def config_with_mlp_width(values: dict, mlp_hidden: int, model_type: str) -> ModelConfig:
    """ModelConfig whose MLP width is exactly `mlp_hidden`.

    ModelConfig derives the width from `mlp_ratio` (SwiGLU: 2/3 of it, rounded up to a multiple
    of 64 from 64 on), so find a ratio that lands on the wanted width and check it does.
    """
    if mlp_hidden < 1:  # (ModelConfig's own message would name pretrain's --mlp-ratio)
        raise UserError(f"the {model_type} config.json gives the MLP {mlp_hidden} hidden units (n_inner or "
                        "intermediate_size); correct it or re-save the model")
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
        except ValueError as exc:  # the config contradicts itself (heads that do not divide): no model has it
            raise UserError(f"the {model_type} config.json is invalid: {exc}; correct it or re-save the model") from exc
        if config.mlp_hidden == mlp_hidden:
            return config
    raise _unsupported(
        model_type,
        f"MLP width {mlp_hidden}",
        "llmkit's SwiGLU widths from 64 on are multiples of 64",
    )


# ---------------------------------------------------------------------------------------------
# Shapes only, for planning

GPT2_SHAPED = ("gpt2",)
LLAMA_SHAPED = ("llama", "mistral", "qwen2", "qwen3")
LARGEST_SIZE = 2**26  # any width, vocabulary or context: 64M (Llama 4's context is 10M)
LARGEST_LAYERS = 4096


def planning_approximations(data: dict) -> list[str]:
    """What shapes_from_config_json cannot express, said in words (for plan's notes)."""
    notes = []
    kind = data.get("model_type")
    if kind == "qwen2" and data.get("attention_bias", True):
        notes.append("qwen2 has biases on q, k and v only; llmkit's one bias switch gives every linear layer one, so the "
                     "parameter count is slightly high (Qwen2-0.5B: 276,480 of 494M)")
    elif kind in LLAMA_SHAPED and bool(data.get("attention_bias")) != bool(data.get("mlp_bias")):
        # llmkit's one bias switch: on where either is, so the layers without biases are counted with them
        width, layers = data.get("hidden_size") or 0, data.get("num_hidden_layers") or 0
        heads = data.get("num_attention_heads") or 1
        kv_width = (data.get("num_key_value_heads") or heads) * (width // heads)
        extra = (2 * (data.get("intermediate_size") or 0) + width if data.get("attention_bias")
                 else 2 * width + 2 * kv_width)
        has, lacks = ("attention", "MLP") if data.get("attention_bias") else ("MLP", "attention")
        notes.append(f"{kind} has biases in its {has} layers only; llmkit's one bias switch gives the {lacks} layers "
                     f"biases too, so the parameter count is {extra * layers:,} high")
    if kind == "qwen3":
        notes.append("qwen3's q and k norms (2 x head_dim weights a layer) are not counted")
    window = data.get("sliding_window")
    if window and data.get("use_sliding_window", True) and data.get("model_type") in ("mistral", "qwen2", "qwen3"):
        notes.append(f"sliding_window {window}: attention reads at most {window} tokens back, but its FLOPs and memory are "
                     "counted over the whole sequence (high for sequences longer than the window)")
    return notes


def _whole(data: dict, key: str, where: str, default: int | None = None) -> int:
    """`data[key]` as a positive whole number (4096.0 reads as 4096); a null counts as missing, so
    it takes `default` where there is one. A config.json is hand-edited, so a wrong value is named."""
    value = data.get(key)
    if value is None:
        if default is None:
            raise KeyError(key)
        return default
    whole = (isinstance(value, int) and not isinstance(value, bool)) or (isinstance(value, float) and value.is_integer())
    if not whole or value < 1:
        raise UserError(f"{where}: {key} must be a positive whole number, got {value!r}")
    # the model is built (on the meta device) to count it: a typo's size would overflow or never finish
    largest = LARGEST_LAYERS if key in ("n_layer", "num_hidden_layers") else LARGEST_SIZE
    if value > largest:
        shown = f"{value:,}" if isinstance(value, int) else f"{value:g}"
        raise UserError(f"{where}: {key} {shown} is larger than llmkit plans for ({largest:,}); check the value")
    return int(value)


def _flag(data: dict, key: str, where: str, default: bool) -> bool:
    """`data[key]` as a JSON true or false (null: `default`); a string such as "false" is named, not read as true."""
    value = data.get(key)
    if value is None:
        return default
    if not isinstance(value, bool):
        raise UserError(f"{where}: {key} must be true or false, got {value!r}")
    return value


def shapes_from_config_json(data: dict, where: str) -> ModelConfig:
    """A ModelConfig with the shapes of a transformers config.json, read as plain JSON: for
    planning (`llmkit plan --hf-config`), so lenient where import is strict (a Mistral's sliding
    window, a RoPE scaling: the sizes are what count) and open to the Llama-shaped families.
    `where` names the file in errors."""
    kind = data.get("model_type")
    try:
        if kind in GPT2_SHAPED:
            heads, width = _whole(data, "n_head", where), _whole(data, "n_embd", where)
            values = dict(GPT2_STYLE, bias=True, vocab_size=_whole(data, "vocab_size", where),
                          context_length=_whole(data, "n_positions", where, 1024), n_layer=_whole(data, "n_layer", where),
                          n_head=heads, n_kv_head=heads, n_embd=width,
                          tie_embeddings=_flag(data, "tie_word_embeddings", where, True))
            return config_with_mlp_width(values, _whole(data, "n_inner", where, 4 * width), kind)
        if kind in LLAMA_SHAPED:
            heads, width = _whole(data, "num_attention_heads", where), _whole(data, "hidden_size", where)
            if _whole(data, "head_dim", where, width // heads) != width // heads:
                raise UserError(f"{where}: head_dim {data['head_dim']} is not hidden_size / num_attention_heads; "
                                "llmkit's attention derives the head size from the width, so it cannot plan this model "
                                "(many Qwen3 and Mistral-Nemo configs)")
            values = dict(LLAMA_STYLE, vocab_size=_whole(data, "vocab_size", where),
                          context_length=_whole(data, "max_position_embeddings", where, 2048),
                          n_layer=_whole(data, "num_hidden_layers", where), n_head=heads,
                          n_kv_head=_whole(data, "num_key_value_heads", where, heads), n_embd=width,
                          bias=any([_flag(data, "attention_bias", where, kind == "qwen2"),
                                    _flag(data, "mlp_bias", where, False)]),
                          tie_embeddings=_flag(data, "tie_word_embeddings", where, False))
            return config_with_mlp_width(values, _whole(data, "intermediate_size", where), kind)
    except KeyError as exc:
        raise UserError(f"{where}: a {kind} config needs {exc.args[0]!r}") from None
    raise UserError(f"{where}: model_type {kind!r} is not one llmkit plans for; use GPT-2, Llama, Mistral or Qwen2 "
                    "configs, or the model flags")
