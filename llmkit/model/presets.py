"""Named model sizes (`--model PRESET`) and the one place that builds a model from a config.

A preset fills ModelConfig fields; per-field flags (`--n-layer 6`, `--norm layernorm`) override
it, and the vocabulary size always comes from the tokenizer.
"""

from __future__ import annotations

import dataclasses
from typing import Any

from llmkit.errors import UsageError, UserError, did_you_mean
from llmkit.model.gpt import GPT, ModelConfig

_GPT2 = dict(norm="layernorm", pos="learned", activation="gelu", bias=True, tie_embeddings=True)
_LLAMA = dict(norm="rmsnorm", pos="rope", activation="swiglu", bias=False, tie_embeddings=True)

PRESETS: dict[str, dict[str, Any]] = {
    # Minutes on one CPU core: the quickstart and the tests.
    "tiny": dict(_LLAMA, n_layer=4, n_head=4, n_kv_head=4, n_embd=128, context_length=256),
    "mini": dict(_LLAMA, n_layer=6, n_head=6, n_kv_head=2, n_embd=384, context_length=512),
    # Llama-style (RMSNorm, RoPE, SwiGLU, grouped-query attention).
    "small": dict(_LLAMA, n_layer=12, n_head=12, n_kv_head=4, n_embd=768, context_length=1024),
    "medium": dict(_LLAMA, n_layer=24, n_head=16, n_kv_head=4, n_embd=1024, context_length=2048),
    "1b": dict(_LLAMA, n_layer=16, n_head=32, n_kv_head=8, n_embd=2048, mlp_ratio=6.0, context_length=2048, tie_embeddings=False),
    # The GPT-2 family (LayerNorm, learned positions, GELU, biases); 124M with GPT-2's vocabulary.
    "gpt2-tiny": dict(_GPT2, n_layer=4, n_head=4, n_embd=128, context_length=256),
    "gpt2": dict(_GPT2, n_layer=12, n_head=12, n_embd=768, context_length=1024),
    "gpt2-medium": dict(_GPT2, n_layer=24, n_head=16, n_embd=1024, context_length=1024),
    "gpt2-large": dict(_GPT2, n_layer=36, n_head=20, n_embd=1280, context_length=1024),
    "gpt2-xl": dict(_GPT2, n_layer=48, n_head=25, n_embd=1600, context_length=1024),
    # The LSTM baseline.
    "lstm": dict(arch="lstm", n_layer=2, n_head=1, n_embd=256, context_length=256, tie_embeddings=True),
}


def model_config_fields() -> list[str]:
    return [f.name for f in dataclasses.fields(ModelConfig)]


# Model fields the LSTM baseline has no use for: given, they would only change its fingerprint.
TRANSFORMER_ONLY = ("n_head", "n_kv_head", "mlp_ratio", "norm", "pos", "activation", "bias", "rope_theta")


def resolve_model_config(preset: str, vocab_size: int, overrides: dict[str, Any] | None = None) -> ModelConfig:
    """Preset < overrides (fields left None are ignored); vocab_size from the tokenizer."""
    if preset not in PRESETS:
        raise UsageError(f"--model {preset!r} is not a model preset; {did_you_mean(preset, PRESETS)}choose one of: "
                         f"{', '.join(PRESETS)}")
    values = dict(PRESETS[preset])
    for key, value in (overrides or {}).items():
        if value is not None:
            if key not in model_config_fields():
                raise UserError(f"unknown model field {key!r}; known: {', '.join(model_config_fields())}")
            values[key] = value
    if values.get("arch") == "lstm":
        unused = [key for key in TRANSFORMER_ONLY if (overrides or {}).get(key) is not None]
        if unused:
            raise UsageError(f"the LSTM has no {', '.join('--' + key.replace('_', '-') for key in unused)} (attention, positions, "
                            "norms and MLP are the Transformer's); leave them out, or choose a Transformer preset")
        if (overrides or {}).get("objective") == "mlm":
            raise UsageError("--objective mlm needs a Transformer: the LSTM reads left to right; leave out --objective or "
                            "choose a Transformer preset")
        # A Transformer preset's values of them (`--model tiny --arch lstm`) would give one LSTM
        # another config and fingerprint than `--model lstm` (average refused the pair): the lstm
        # preset's values, whatever the preset.
        unused_defaults = {field.name: field.default for field in dataclasses.fields(ModelConfig) if field.name in TRANSFORMER_ONLY}
        values.update(unused_defaults, n_head=1, n_kv_head=1)
    elif "n_head" in (overrides or {}) and overrides.get("n_head") and not (overrides or {}).get("n_kv_head"):
        # Changing the head count without naming KV heads keeps the preset's GQA ratio when it divides.
        kv = values.get("n_kv_head") or values["n_head"]
        if values["n_head"] % kv:
            values["n_kv_head"] = values["n_head"]
    values["vocab_size"] = vocab_size
    try:
        return ModelConfig(**values)
    except ValueError as exc:
        raise UsageError(f"invalid model configuration: {exc}; change the model flags") from exc


def build_model(config: ModelConfig, *, initialise: bool = True):
    """A model for the config's architecture: freshly initialised, or (`initialise=False`, a GPT)
    with its weights left unset for a caller that loads them."""
    if config.arch == "lstm":
        from llmkit.model.lstm import LSTMLM

        return LSTMLM(config)
    return GPT(config, initialise=initialise)


def non_embedding_params(model) -> int:
    """Kaplan et al.'s N, what scaling laws are fitted on: every parameter but the token and
    position embeddings (a tied output head is the token embedding; an untied one counts).
    `GPT.num_params(non_embedding=True)` is another count, the FLOPs': it keeps a tied token
    embedding, whose head is a matrix product per token (an untied one is a lookup: left out)."""
    embedding = model.tok_emb.weight.numel()
    if getattr(model, "pos_emb", None) is not None:
        embedding += model.pos_emb.weight.numel()
    return model.num_params() - embedding
