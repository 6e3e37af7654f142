"""Hugging Face transformers state dicts <-> llmkit GPT state dicts (the configs: hf_config.py).

The weight layouts differ in three ways worth knowing:
  * GPT-2 uses `Conv1D` layers whose weight is [in, out]: every matrix is transposed, and
    q/k/v live in one `c_attn` matrix.
  * llmkit packs k and v in one `kv_proj` ([k rows; v rows]) and gate and up in one `up_proj`
    ([gate rows; up rows]); Llama keeps them as separate matrices.
  * RoPE: llmkit rotates the two halves of each head (x1, x2 = x.chunk(2)), the same convention
    as transformers' `rotate_half`, so q/k rows need no permutation.
GPT-2 has no grouped-query attention: a GQA model exports by repeating each KV head for the
query heads that share it, which computes the same function.
"""

from __future__ import annotations

import re

import torch

from llmkit.errors import UserError
from llmkit.model.gpt import ModelConfig
from llmkit.model.hf_config import hf_family


def _t(x: torch.Tensor, dtype: torch.dtype) -> torch.Tensor:
    """`x` in `dtype` (one copy at most; none when it is in `dtype` already), see _own."""
    return _own(x.detach().to(dtype))


def _finite(name: str, source: torch.Tensor, converted: torch.Tensor) -> torch.Tensor:
    """`converted` (`source` in another dtype) if every value is finite, else a one-line error: a
    weight that holds NaN or inf (a damaged or diverged model, which would score and generate
    noise, every later stage blaming itself), or one beyond float16's range, which the conversion
    made inf without a word."""
    if not converted.is_floating_point() or bool(torch.isfinite(converted).all()):
        return converted
    if not bool(torch.isfinite(source).all()):
        raise UserError(f"the weight {name} holds NaN or inf: the model is damaged or diverged in training; "
                        "convert another checkpoint of it")
    largest, target = float(source.abs().max()), str(converted.dtype).removeprefix("torch.")
    wider = {"float16": "pass --dtype bfloat16 or float32", "bfloat16": "pass --dtype float32"}.get(target, "rescale the model first")
    raise UserError(f"the weight {name} holds values up to {largest:.4g}, beyond {target}'s range "
                    f"({torch.finfo(converted.dtype).max:g}); {wider}")


def _own(x: torch.Tensor) -> torch.Tensor:
    """`x` contiguous and alone in its memory: a slice of a packed matrix (q of c_attn, k of
    kv_proj) shares it with its siblings, which safetensors refuses to save."""
    x = x.contiguous()
    if x.storage_offset() or x.untyped_storage().nbytes() != x.numel() * x.element_size():
        return x.clone()
    return x


def _expand_kv(w: torch.Tensor, config: ModelConfig) -> torch.Tensor:
    """Repeat each KV head's rows for the query heads sharing it (GQA -> multi-head)."""
    groups = config.n_head // config.n_kv_head
    if groups == 1:
        return w
    rows = w.reshape(config.n_kv_head, config.head_dim, *w.shape[1:])
    return rows.repeat_interleave(groups, dim=0).reshape(config.n_head * config.head_dim, *w.shape[1:])


def to_hf_state(state: dict[str, torch.Tensor], config: ModelConfig, dtype: torch.dtype = torch.float32) -> dict[str, torch.Tensor]:
    """llmkit GPT state dict -> transformers state dict in `dtype` (tied lm_head left out, as
    transformers saves it). Each tensor is converted as the mapping reads it, and checked so (by the
    checkpoint's own name: a weight beyond the dtype's range); the mapping then works in `dtype`, as
    converting commutes with its slices, joins and transposes: memory is the model plus one copy (a
    converted copy of the whole state made first held 2 bytes a parameter more)."""
    family = hf_family(config)
    out: dict[str, torch.Tensor] = {}
    kv = config.n_kv_head * config.head_dim
    hidden = config.mlp_hidden

    def get(name: str, default_like: torch.Tensor | None = None) -> torch.Tensor:
        if name in state:  # (by the checkpoint's own name, before the mapping renames, and joins, it)
            return _finite(name, state[name], state[name].detach().to(dtype))
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
    return {k: _t(v, dtype) for k, v in out.items()}


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


def from_hf_state(state: dict[str, torch.Tensor], config: ModelConfig, model_type: str,
                  dtype: torch.dtype = torch.float32,
                  bias_groups: tuple[str, ...] = ("self_attn", "mlp")) -> dict[str, torch.Tensor]:
    """transformers state dict (normalized keys) -> llmkit GPT state dict in `dtype`. Every
    transformers weight must be used: an unknown one means a feature llmkit's GPT does not have.
    `bias_groups`: a Llama's layer groups whose config has biases; the other group's are zeros
    (llmkit has one bias flag), and a bias the file holds for it anyway is an unknown weight, as
    transformers ignores it.
    Empties `state` as it goes: each source tensor is converted as it is taken and dropped, so
    memory stays near the larger of the source and the result, not their sum plus a float32 copy."""
    out: dict[str, torch.Tensor] = {}
    missing: list[str] = []

    def take(name: str) -> torch.Tensor | None:
        if name in state:
            source = state.pop(name)
            return _finite(name, source, _t(source, dtype))
        missing.append(name)
        return None

    # (before the per-layer loop: n_layer 10**9 in config.json collected names until memory ran out)
    prefix = "transformer.h." if model_type == "gpt2" else "model.layers."
    stored = {int(name[len(prefix):].split(".")[0]) for name in state
              if name.startswith(prefix) and name[len(prefix):].split(".")[0].isdigit()}
    if len(stored) != config.n_layer:  # (more layers than the config says: the config is the odd one)
        fix = "correct config.json, or re-save the model" if stored and max(stored) >= config.n_layer else "re-save the model"
        raise UserError(f"config.json says {config.n_layer} layer(s) (n_layer / num_hidden_layers), but the weights hold "
                        f"{len(stored)}; the two do not belong together: {fix} with save_pretrained")
    embedding = state.get("transformer.wte.weight" if model_type == "gpt2" else "model.embed_tokens.weight")
    if embedding is not None and tuple(embedding.shape) != (config.vocab_size, config.n_embd):  # (before a model that size)
        raise UserError(f"config.json makes the embedding {(config.vocab_size, config.n_embd)} (vocab_size, hidden size), but "
                        f"the weights hold {tuple(embedding.shape)}; the two do not belong together: re-save the model")
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
                    group, layer = name.split(".")
                    if p == "bias" and group not in bias_groups:
                        return torch.zeros(for_bias[layer], dtype=dtype)
                    tensor = take(h + name + "." + p)  # a bias the config says is there: missing is an error
                    # (k and v, gate and up are joined below: a wrong split of the right total would pass the
                    # joined tensor's check, and load as a model transformers refuses)
                    columns = config.mlp_hidden if layer == "down_proj" else config.n_embd
                    shape = (for_bias[layer],) if p == "bias" else (for_bias[layer], columns)
                    if tensor is not None and tuple(tensor.shape) != shape:
                        raise UserError(f"{h}{name}.{p} has shape {tuple(tensor.shape)} but config.json makes {shape}; the "
                                        "two do not belong together, re-save the model")
                    return tensor

                out[b + f"attn.q_proj.{p}"] = part("self_attn.q_proj")
                k, v = part("self_attn.k_proj"), part("self_attn.v_proj")
                out[b + f"attn.kv_proj.{p}"] = None if k is None or v is None else torch.cat([k, v])
                out[b + f"attn.out_proj.{p}"] = part("self_attn.o_proj")
                gate, up = part("mlp.gate_proj"), part("mlp.up_proj")
                out[b + f"mlp.up_proj.{p}"] = None if gate is None or up is None else torch.cat([gate, up])
                out[b + f"mlp.down_proj.{p}"] = part("mlp.down_proj")
        out["final_norm.weight"] = take("model.norm.weight")
    if config.tie_embeddings:
        state.pop("lm_head.weight", None)  # a copy some tied checkpoints store anyway (import_hf unties a head that differs)
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
    return {k: _own(v) for k, v in out.items()}
