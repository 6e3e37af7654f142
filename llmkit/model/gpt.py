"""A decoder-only Transformer in one file, nanoGPT-like: config dataclass, blocks, forward.

Options cover the GPT-2 family (LayerNorm, learned positions, GELU, bias) and the Llama family
(RMSNorm, RoPE, SwiGLU, grouped-query attention, no bias). Attention runs through
`F.scaled_dot_product_attention`, which picks flash / memory-efficient kernels on GPU.

Contract with generation and evaluation (docs/pretrain.md):
  model(idx, targets=None, *, cache=None) -> (logits [B,T,V], loss or None)
  model(idx, cache=cache, last_only=True) -> (logits [B,1,V], None): the last position's only (a prefill)
  model(idx, targets, return_logits=False) -> (None, loss): training's call; on a CPU the head and
      the loss run fused in chunks (fused_loss.py) and no logits are made
  model.new_cache(batch_size, max_len, pad_lengths=None) -> KVCache that forward appends to
  model.hidden_states(idx, attention_mask=None) -> [B,T,C] final-norm states
With `pad_lengths` (LEFT padding per row) padded keys are invisible and positions count from
each row's first real token, so a left-padded batch gives the same logits as its rows alone.
`objective == "mlm"` makes attention bidirectional (BERT-style masked LM).
"""

from __future__ import annotations

import hashlib
import math
from dataclasses import asdict, dataclass, fields
from typing import NamedTuple

import torch
import torch.nn as nn
import torch.nn.functional as F

from llmkit.model import fused_loss, sequence_grads
from llmkit.model.fused_loss import IGNORE_INDEX
from llmkit.model.cpu_gemm import Linear
from llmkit.model.fused_ops import apply_rope, swiglu
from llmkit.model.thread_invariant import gelu_tanh


@dataclass
class ModelConfig:
    arch: str = "gpt"  # "gpt" | "lstm"
    objective: str = "clm"  # "clm" (next token) | "mlm" (masked LM, bidirectional)
    vocab_size: int = 8192
    context_length: int = 256
    n_layer: int = 4
    n_head: int = 4
    n_kv_head: int | None = None  # None = n_head (multi-head); fewer = grouped-query attention
    n_embd: int = 256
    mlp_ratio: float = 4.0  # hidden width / n_embd (SwiGLU keeps params equal by using 2/3 of it)
    dropout: float = 0.0
    norm: str = "rmsnorm"  # "rmsnorm" | "layernorm"
    pos: str = "rope"  # "rope" | "learned"
    activation: str = "swiglu"  # "swiglu" | "gelu"
    tie_embeddings: bool = True
    bias: bool = False
    rope_theta: float = 10000.0
    norm_eps: float = 1e-5

    def __post_init__(self):
        if self.n_kv_head is None:
            self.n_kv_head = self.n_head
        checks = {
            "arch": (self.arch, ("gpt", "lstm")),
            "objective": (self.objective, ("clm", "mlm")),
            "norm": (self.norm, ("rmsnorm", "layernorm")),
            "pos": (self.pos, ("rope", "learned")),
            "activation": (self.activation, ("swiglu", "gelu")),
        }
        for name, (value, allowed) in checks.items():
            if value not in allowed:
                raise ValueError(f"{name} must be one of {', '.join(allowed)}, got {value!r}")
        if self.arch == "gpt":
            if self.n_embd % self.n_head:
                raise ValueError(f"n_embd ({self.n_embd}) must be divisible by n_head ({self.n_head})")
            if self.n_head % self.n_kv_head:
                raise ValueError(f"n_head ({self.n_head}) must be divisible by n_kv_head ({self.n_kv_head})")
            if self.pos == "rope" and (self.n_embd // self.n_head) % 2:
                raise ValueError("RoPE needs an even head size (n_embd / n_head)")
            if self.n_embd > 0 and self.mlp_hidden < 1:
                raise ValueError(f"mlp_ratio {self.mlp_ratio:g} gives the MLP no hidden units at width {self.n_embd} "
                                 f"({self.activation}: {'2/3 of ' if self.activation == 'swiglu' else ''}ratio x width, "
                                 "rounded down); raise --mlp-ratio")
        for name in ("vocab_size", "context_length", "n_layer", "n_head", "n_embd"):
            if getattr(self, name) <= 0:
                raise ValueError(f"{name} must be positive, got {getattr(self, name)}")

    @property
    def head_dim(self) -> int:
        return self.n_embd // self.n_head

    @property
    def mlp_hidden(self) -> int:
        hidden = int(self.mlp_ratio * self.n_embd)
        if self.activation == "swiglu":  # three matrices instead of two: keep the parameter count
            hidden = int(2 * hidden / 3)
            hidden = 64 * math.ceil(hidden / 64) if hidden >= 64 else hidden
        return hidden

    def to_dict(self) -> dict:
        return asdict(self)

    @classmethod
    def from_dict(cls, data: dict) -> ModelConfig:
        known = {f.name for f in fields(cls)}
        return cls(**{k: v for k, v in data.items() if k in known})


def make_norm(config: ModelConfig, dim: int) -> nn.Module:
    if config.norm == "rmsnorm":
        return nn.RMSNorm(dim, eps=config.norm_eps)
    return nn.LayerNorm(dim, eps=config.norm_eps, bias=config.bias)


def _plain(module: nn.Module) -> bool:
    """True when `module` computes exactly what its class says: no hooks (tensor and sequence
    parallelism install theirs, with layouts that assume the call's usual shape), plain,
    unsharded parameters, and no per-sequence gradients (which need every call's batch
    dimension). A fast path that changes a call's shape takes it only then."""
    if module._forward_hooks or module._forward_pre_hooks or sequence_grads.active():
        return False
    return all(type(p) is nn.Parameter for p in module.parameters(recurse=False))


def embed_tokens(tok_emb: nn.Module, pos_emb: nn.Module | None, idx: torch.Tensor, *,
                 positions: torch.Tensor | None = None, start: int = 0) -> torch.Tensor:
    """Token embeddings plus learned position embeddings: of `positions` [B,T] when given, else of
    the contiguous positions start..start+T-1 in every row (the model's trunk, its decode path and
    a pipeline stage all embed through here)."""
    x = tok_emb(idx)
    if pos_emb is None:
        return x
    if positions is not None:
        return x + pos_emb(positions)
    B, T = idx.shape
    slots = torch.arange(start, start + T, device=idx.device)
    if _plain(tok_emb) and _plain(pos_emb):
        return x + pos_emb(slots)  # one [T, C] lookup broadcast over the batch
    return x + pos_emb(slots.expand(B, T))  # a tensor-parallel embedding takes its [B, T] layout


# ---------------------------------------------------------------------------------------------
# Rotary position embeddings


# RoPE positions tabled when a model is built (64k x a head of 128: 32 MB): a --context-length of 8M made tables
# of 1 GB before the first step of a run training on 64 tokens; longer ones are made when first read
ROPE_TABLE_POSITIONS = 1 << 16


def rope_tables(head_dim: int, length: int, theta: float) -> tuple[torch.Tensor, torch.Tensor]:
    inv_freq = 1.0 / (theta ** (torch.arange(0, head_dim, 2, dtype=torch.float32) / head_dim))
    angles = torch.outer(torch.arange(length, dtype=torch.float32), inv_freq)  # [L, D/2]
    return angles.cos(), angles.sin()


# ---------------------------------------------------------------------------------------------
# KV cache


class KVCache:
    """Preallocated keys/values for every layer; `pos` is how many slots are filled.

    Slot s of row b holds the token at position s - pad_lengths[b] (negative = padding).
    """

    def __init__(self, config: ModelConfig, batch_size: int, max_len: int, pad_lengths, device, dtype):
        shape = (batch_size, config.n_kv_head, max_len, config.head_dim)
        self.k = [torch.zeros(shape, device=device, dtype=dtype) for _ in range(config.n_layer)]
        self.v = [torch.zeros(shape, device=device, dtype=dtype) for _ in range(config.n_layer)]
        self.max_len = max_len
        self.batch_size = batch_size
        self.pos = 0
        if pad_lengths is None:
            pad_lengths = torch.zeros(batch_size, dtype=torch.long)
        self.pad_lengths = torch.as_tensor(pad_lengths, dtype=torch.long, device=device)
        self.has_padding = bool(self.pad_lengths.any())  # read once, not on every decode step

    def reset(self) -> None:
        self.pos = 0

    def reorder(self, rows: torch.Tensor) -> None:
        """Row i becomes a copy of row `rows[i]` (beam search: each beam goes on from its parent's keys)."""
        rows = rows.to(self.pad_lengths.device)
        for buffers in (self.k, self.v):
            for layer, buffer in enumerate(buffers):
                buffers[layer] = buffer.index_select(0, rows)
        self.pad_lengths = self.pad_lengths.index_select(0, rows)

    def adopt(self, row: int, source: KVCache, source_row: int, n: int, end: int) -> None:
        """Row `row` takes the newest `n` keys and values of `source`'s row `source_row`, in its
        slots up to `end` (generation's sliding window: a row that did not slide keeps its cache)."""
        for mine, theirs in ((self.k, source.k), (self.v, source.v)):
            for layer in range(len(mine)):
                mine[layer][row, :, end - n : end] = theirs[layer][source_row, :, source.pos - n : source.pos]


class SlotWrite(NamedTuple):
    """A KV cache as the static-shape decode step sees it (GPT.decode_step): every layer's full
    buffers, and the slot the new token's key and value go to (a one-element long tensor, so the
    slot changing from step to step changes no shape and no Python value a compiled graph keys on)."""

    k: list[torch.Tensor]
    v: list[torch.Tensor]
    slot: torch.Tensor


def fuse_qkv(x: torch.Tensor) -> bool:
    """Whether Attention.projections takes one product for q and k/v (see there): GPU training
    under autocast (bf16, the GPU's default). Not for decoding, where the weights' concatenation
    would triple a memory-bound step's reads of them, nor in fp32, where the concatenated weight,
    not the parameter, would be kept for the backward (under autocast both paths keep bf16 copies)."""
    return x.is_cuda and torch.is_grad_enabled() and torch.is_autocast_enabled("cuda")


class Attention(nn.Module):
    def __init__(self, config: ModelConfig):
        super().__init__()
        self.config = config
        self.n_head, self.n_kv_head, self.head_dim = config.n_head, config.n_kv_head, config.head_dim
        self.q_proj = Linear(config.n_embd, config.n_head * config.head_dim, bias=config.bias)
        self.kv_proj = Linear(config.n_embd, 2 * config.n_kv_head * config.head_dim, bias=config.bias)
        self.out_proj = Linear(config.n_embd, config.n_embd, bias=config.bias)
        self.out_proj.is_residual_out = True
        self.dropout = config.dropout

    def projections(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """q [..., H * D] and k/v [..., 2 * KV * D] of x. In GPU training, one product over both
        weights, as a fused q/k/v layer computes them: two cost a compiled training step 3 more
        GEMMs and 3 more kernels a layer (inductor's code, counted), where nanoGPT's step, 11 %
        faster on an H200, has one (the gain of this alone is not measured yet). On a CPU two
        stay: one over torch.cat of the weights measured no faster (within 0.5 % per training step
        at 4 x 256 and 6 x 384), and CPU runs keep their bits. Plain layers only: LoRA's,
        tensor-parallel and per-sequence-gradient ones keep their own calls."""
        # fp32 weights only: FSDP2's bf16 gathered ones would be concatenated into a copy that
        # autograd keeps to the backward and FSDP never frees (the parameters themselves it does)
        if (fuse_qkv(x) and _plain(self.q_proj) and _plain(self.kv_proj) and type(self.q_proj) is type(self.kv_proj) is Linear
                and self.q_proj.weight.dtype == torch.float32):
            weight = torch.cat([self.q_proj.weight, self.kv_proj.weight])
            bias = None if self.q_proj.bias is None else torch.cat([self.q_proj.bias, self.kv_proj.bias])
            return F.linear(x, weight, bias).split([self.q_proj.out_features, self.kv_proj.out_features], dim=-1)
        return self.q_proj(x), self.kv_proj(x)

    def forward(self, x, rope, mask, cache: KVCache | SlotWrite | None, layer: int):
        B, T, _ = x.shape
        q, kv = self.projections(x)
        q = q.view(B, T, self.n_head, self.head_dim).transpose(1, 2)
        k, v = kv.view(B, T, 2, self.n_kv_head, self.head_dim).permute(2, 0, 3, 1, 4)
        if rope is not None:
            q, k = apply_rope(q, *rope), apply_rope(k, *rope)
        if isinstance(cache, SlotWrite):  # static shapes: attend over every slot, the mask hides the unfilled
            cache.k[layer].index_copy_(2, cache.slot, k)
            cache.v[layer].index_copy_(2, cache.slot, v)
            k, v = cache.k[layer], cache.v[layer]
        elif cache is not None:
            start = cache.pos
            cache.k[layer][:, :, start : start + T] = k
            cache.v[layer][:, :, start : start + T] = v
            k = cache.k[layer][:, :, : start + T]
            v = cache.v[layer][:, :, : start + T]
        if T == 1 and isinstance(cache, KVCache) and q.device.type == "cpu" and not self.training:
            y = _one_query_attention(q, k, v, mask)
        else:
            y = F.scaled_dot_product_attention(
                q,
                k,
                v,
                attn_mask=mask,
                # With a cached prefix a mask-free step is one query over all keys, not causal.
                is_causal=mask is None and self.config.objective == "clm" and (cache is None or cache.pos == 0),
                dropout_p=self.dropout if self.training else 0.0,
                enable_gqa=self.n_kv_head != self.n_head,
            )
        y = self.out_proj(y.transpose(1, 2).reshape(B, T, self.n_head * self.head_dim))
        return F.dropout(y, self.dropout, True) if self.training and self.dropout else y


def _one_query_attention(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, mask: torch.Tensor | None = None) -> torch.Tensor:
    """A decoding step's attention on a CPU (one query a sequence over its cached keys) as two batched
    products and a softmax, whose bits do not follow the thread count: PyTorch's CPU kernel for
    scaled_dot_product_attention splits its sums by thread (on an AMD EPYC with AVX-512, torch 2.13:
    up to 9e-8 apart between 1 and 2 threads; its masked kernel, a left-padded batch's, up to 8e-7),
    so a completion changed with the machine's cores. The query heads that share a key/value head
    (grouped-query attention) are one batch of rows. `mask` [B, 1, 1, S]: the keys each row may see."""
    B, H, _, D = q.shape
    kv_heads, S = k.shape[1], k.shape[2]
    rows = q.reshape(B * kv_heads, H // kv_heads, D) * D**-0.5
    scores = torch.bmm(rows, k.reshape(B * kv_heads, S, D).transpose(1, 2))
    if mask is not None:
        scores = scores.view(B, kv_heads, H // kv_heads, S).masked_fill(~mask.view(B, 1, 1, S), float("-inf"))
    weights = scores.view(B * kv_heads, H // kv_heads, S).softmax(-1)
    return torch.bmm(weights, v.reshape(B * kv_heads, S, D)).view(B, H, 1, D)


class MLP(nn.Module):
    def __init__(self, config: ModelConfig):
        super().__init__()
        hidden = config.mlp_hidden
        self.swiglu = config.activation == "swiglu"
        self.up_proj = Linear(config.n_embd, (2 if self.swiglu else 1) * hidden, bias=config.bias)
        self.down_proj = Linear(hidden, config.n_embd, bias=config.bias)
        self.down_proj.is_residual_out = True
        self.dropout = config.dropout

    def forward(self, x):
        h = self.up_proj(x)
        if self.swiglu:
            h = swiglu(h)  # silu(gate) * up
        else:
            h = gelu_tanh(h)
        h = self.down_proj(h)
        return F.dropout(h, self.dropout, True) if self.training and self.dropout else h


class Block(nn.Module):
    def __init__(self, config: ModelConfig):
        super().__init__()
        self.attn_norm = make_norm(config, config.n_embd)
        self.attn = Attention(config)
        self.mlp_norm = make_norm(config, config.n_embd)
        self.mlp = MLP(config)

    def forward(self, x, rope, mask, cache, layer):
        x = x + self.attn(self.attn_norm(x), rope, mask, cache, layer)
        return x + self.mlp(self.mlp_norm(x))


def unmaterialised(module: nn.Module) -> bool:
    """True for a model built on the meta device and not yet given memory (a split model's ranks
    materialise their own parts: llmkit/train/parallelize.py)."""
    return any(p.is_meta for p in module.parameters())


def _allocate(module: nn.Module, device: torch.device) -> None:
    """Give every meta parameter and buffer of `module` uninitialised memory on `device`, a tied
    parameter once. (Module.to_empty does the same through torch.empty_like, whose meta path
    imports sympy and torch.fx on first use: 0.3 s of every process that builds a model.)"""
    made: dict[int, torch.Tensor] = {}
    for part in module.modules():
        for slots in (part._parameters, part._buffers):
            for name, tensor in slots.items():
                if tensor is None or not tensor.is_meta:
                    continue
                if id(tensor) not in made:
                    fresh = torch.empty(tensor.shape, dtype=tensor.dtype, device=device)
                    made[id(tensor)] = nn.Parameter(fresh, tensor.requires_grad) if isinstance(tensor, nn.Parameter) else fresh
                slots[name] = made[id(tensor)]


def training_flops_per_token(params: int, n_layer: int, n_embd: int, seq_len: int) -> int:
    """Training FLOPs (forward + backward) per token: 6N over the parameters its matrix products
    use, plus attention's 12 * L * C * T (what MFU counts, and what `llmkit plan` plans with)."""
    return int(6 * params + 12 * n_layer * n_embd * seq_len)


class GPT(nn.Module):
    def __init__(self, config: ModelConfig, *, initialise: bool = True):
        """`initialise=False` leaves the weights unset, for a caller that loads them."""
        super().__init__()
        if config.arch != "gpt":
            raise ValueError(f"GPT needs arch='gpt', got {config.arch!r}")
        self.config = config
        # One draw from the global generator seeds a generator per parameter, by name: a parameter, or
        # a shard of one, can then be made alone, so a model built on the meta device and split
        # across ranks initialises only each rank's part, to the values one process gives it.
        self.init_seed = int(torch.randint(0, 2**62, (), device="cpu"))
        # The layers are made on the meta device (shapes only) and allocated once where the caller
        # builds the model (its `with torch.device(...)` block; meta stays meta), so PyTorch's own
        # initialisation of each layer, which init_parameters or a checkpoint's weights replace, is
        # never computed (0.3 s of an 82M model's 0.7 s on a CPU).
        target = torch.get_default_device()
        with torch.device("meta"):
            self.tok_emb = nn.Embedding(config.vocab_size, config.n_embd, _weight=torch.empty(config.vocab_size, config.n_embd))
            self.pos_emb = None
            if config.pos == "learned":
                self.pos_emb = nn.Embedding(config.context_length, config.n_embd,
                                            _weight=torch.empty(config.context_length, config.n_embd))
            self.drop = nn.Dropout(config.dropout)
            self.blocks = nn.ModuleList(Block(config) for _ in range(config.n_layer))
            self.final_norm = make_norm(config, config.n_embd)
            self.lm_head = Linear(config.n_embd, config.vocab_size, bias=False)
            if config.pos == "rope":
                # Not saved: recomputed from the config, so checkpoints hold only learned weights.
                self.register_buffer("rope_cos", torch.empty(0), persistent=False)
                self.register_buffer("rope_sin", torch.empty(0), persistent=False)
        if config.tie_embeddings:
            self.lm_head.weight = self.tok_emb.weight
        if target.type != "meta":
            _allocate(self, target)
            self.reset_buffers()
            if initialise:
                self.init_parameters()

    def reset_buffers(self) -> None:
        """The RoPE tables, on the device the (possibly just materialised) buffers are on: up to
        ROPE_TABLE_POSITIONS positions, longer ones when a forward first reads that far (`_rope_for`).
        A position's value does not depend on the table's length (tested), so neither does any result."""
        if self.config.pos == "rope":
            length = min(self.config.context_length, ROPE_TABLE_POSITIONS)
            cos, sin = rope_tables(self.config.head_dim, length, self.config.rope_theta)
            device = self.rope_cos.device
            self.rope_cos, self.rope_sin = cos.to(device), sin.to(device)

    def initial_value(self, name: str, out: torch.Tensor | None = None) -> torch.Tensor:
        """Parameter `name`'s initial value (into `out` when given, else a new CPU tensor): GPT-2's
        init, normal(0, 0.02) for matrices and embeddings with the residual output projections
        scaled by 1/sqrt(2 * n_layer), zero biases, unit norm gains; the same for any layout."""
        if self.config.tie_embeddings and name == "lm_head.weight":
            name = "tok_emb.weight"  # one tensor serves both
        module_name, _, kind = name.rpartition(".")
        module = self.get_submodule(module_name)
        shape = getattr(module, kind).shape
        value = out if out is not None else torch.empty(shape, device="cpu")  # (not the default device: the generators are CPU ones)
        if isinstance(module, (nn.Linear, nn.Embedding)) and kind == "weight":
            std = 0.02 / (math.sqrt(2 * self.config.n_layer) if getattr(module, "is_residual_out", False) else 1.0)
            digest = hashlib.blake2b(f"{self.init_seed}:{name}".encode(), digest_size=8).digest()
            generator = torch.Generator().manual_seed(int.from_bytes(digest, "little") >> 1)
            return value.normal_(0.0, std, generator=generator)
        return value.fill_(1.0 if kind == "weight" else 0.0)  # biases; norms' gains and shifts

    @torch.no_grad()
    def init_parameters(self) -> None:
        for name, param in self.named_parameters():  # a tied tensor once
            if param.device.type == "cpu":
                self.initial_value(name, out=param)
            else:  # the generators are CPU ones, so the values are the same on any device
                param.copy_(self.initial_value(name))

    # -- sizes ------------------------------------------------------------------------------
    def num_params(self, non_embedding: bool = False) -> int:
        """Every parameter (a tied embedding once); `non_embedding`: those a token's matrix
        products use, the FLOPs' count: without the position embedding and, when the head has
        its own weights, without the token embedding (a lookup there, not a product)."""
        n = sum(p.numel() for p in self.parameters())
        if non_embedding and self.pos_emb is not None:
            n -= self.pos_emb.weight.numel()
        if non_embedding and not self.config.tie_embeddings:
            n -= self.tok_emb.weight.numel()
        return n

    def flops_per_token(self, seq_len: int | None = None) -> int:
        c = self.config
        return training_flops_per_token(self.num_params(non_embedding=True), c.n_layer, c.n_embd, seq_len or c.context_length)

    # -- forward ----------------------------------------------------------------------------
    def new_cache(self, batch_size: int, max_len: int | None = None, pad_lengths=None) -> KVCache:
        max_len = max_len or self.config.context_length
        if max_len > self.config.context_length and self.config.pos == "learned":
            raise ValueError(f"max_len {max_len} exceeds the context length {self.config.context_length}")
        weight = self.tok_emb.weight
        dtype = torch.get_autocast_dtype(weight.device.type) if torch.is_autocast_enabled(weight.device.type) else weight.dtype
        return KVCache(self.config, batch_size, max_len, pad_lengths, weight.device, dtype)

    def _positions_and_mask(self, B: int, T: int, device, cache: KVCache | None, attention_mask):
        """Per-row positions [B,T] and the boolean attention mask (True = may attend), or None
        when plain causal/bidirectional attention is enough (the fast SDPA path)."""
        causal = self.config.objective == "clm"
        if cache is not None:
            start = cache.pos
            if start + T > cache.max_len:
                raise ValueError(f"KV cache full: {start} + {T} tokens > max_len {cache.max_len}")
            slots = torch.arange(start, start + T, device=device)
            pad = cache.pad_lengths.to(device)
            positions = (slots[None, :] - pad[:, None]).clamp(min=0)
            if not cache.has_padding and (start == 0 or T == 1):
                # Prefill is plain causal; a one-token step sees every cached key: no mask at all.
                return positions, None
            keys = torch.arange(start + T, device=device)
            visible = keys[None, None, :] >= pad[:, None, None]  # [B,1,S]
            mask = visible & (keys[None, None, :] <= slots[None, :, None]) if causal else visible.expand(B, T, -1)
            mask = mask | (keys[None, None, :] == slots[None, :, None])  # padded queries see themselves: no NaN
            return positions, mask[:, None]
        if attention_mask is None:
            positions = torch.arange(T, device=device).expand(B, T)
            return positions, None
        real = attention_mask.to(device=device, dtype=torch.bool)
        positions = (real.long().cumsum(dim=1) - 1).clamp(min=0)
        idx = torch.arange(T, device=device)
        mask = real[:, None, :].expand(B, T, T)
        if causal:
            mask = mask & (idx[None, :] <= idx[:, None])[None]
        mask = mask | torch.eye(T, dtype=torch.bool, device=device)[None]
        return positions, mask[:, None]

    def _trunk(self, idx, cache=None, attention_mask=None, documents=None):
        B, T = idx.shape
        limit = cache.max_len if cache is not None else self.config.context_length
        if T > limit or (self.config.pos == "learned" and T > self.config.context_length):
            raise ValueError(f"sequence of {T} tokens exceeds the context length {self.config.context_length}")
        if cache is not None and self.config.objective == "mlm":
            raise ValueError("a masked LM (objective mlm) is bidirectional and cannot use a KV cache")
        if documents is not None and (cache is not None or attention_mask is not None):
            raise ValueError("documents (a document mask) is for training windows, not a cache or padding mask")
        if cache is not None and not cache.has_padding and (cache.pos == 0 or T == 1):
            x = self._decode_trunk(idx, cache)  # the generation hot path: no mask, no gathers
            return self.final_norm(x)
        positions, mask = self._positions_and_mask(B, T, idx.device, cache, attention_mask)
        if documents is not None:  # --document-mask: each token attends within its own document alone
            mask = (documents[:, :, None] == documents[:, None, :])[:, None]
            if self.config.objective == "clm":
                mask = mask & torch.ones(T, T, dtype=torch.bool, device=idx.device).tril()
        contiguous = cache is None and attention_mask is None  # positions 0..T-1 in every row
        x = embed_tokens(self.tok_emb, self.pos_emb, idx, positions=None if contiguous else positions)
        if self.training and self.config.dropout:
            x = self.drop(x)
        rope = None
        if self.config.pos == "rope":
            if cache is None and attention_mask is None:  # training: no data-dependent shapes, no graph break
                cos, sin = self._rope_for(T)
                rope = (cos[:T][None, None], sin[:T][None, None])
            else:
                cos, sin = self._rope_for(cache.pos + T if cache is not None else T)
                rope = (cos[positions][:, None], sin[positions][:, None])
        for layer, block in enumerate(self.blocks):
            x = block(x, rope, mask, cache, layer)
        if cache is not None:
            cache.pos += T
        return self.final_norm(x)

    def _decode_trunk(self, idx, cache: KVCache):
        """`_trunk` for a cache without padding, at prefill (plain causal) or one token at a time
        (the query sees every cached key): positions are the slots, so position embeddings and
        RoPE tables are contiguous slices, and no mask is built. Same values as the general path."""
        B, T = idx.shape
        start = cache.pos
        if start + T > cache.max_len:
            raise ValueError(f"KV cache full: {start} + {T} tokens > max_len {cache.max_len}")
        x = embed_tokens(self.tok_emb, self.pos_emb, idx, start=start)
        if self.training and self.config.dropout:
            x = self.drop(x)
        rope = None
        if self.config.pos == "rope":
            cos, sin = self._rope_for(start + T)
            rope = (cos[start : start + T][None, None], sin[start : start + T][None, None])
        for layer, block in enumerate(self.blocks):
            x = block(x, rope, None, cache, layer)
        cache.pos += T
        return x

    def decode_step(self, idx: torch.Tensor, slot: torch.Tensor, pad_lengths: torch.Tensor,
                    keys: list[torch.Tensor], values: list[torch.Tensor]) -> torch.Tensor:
        """Next-token logits [B, V] for one token per row (idx [B, 1]) written at cache slot `slot`
        ([1] long), attending over every slot of the full cache buffers through a mask (slots
        before a row's padding or after `slot` hidden). Unlike `forward` with a KVCache, no shape
        and no Python value depends on the step, so `torch.compile` makes one graph that serves
        every step (llmkit/inference/compiled.py). The caller advances the cache's `pos`."""
        positions = (slot - pad_lengths).clamp(min=0)[:, None]  # [B, 1]
        x = embed_tokens(self.tok_emb, self.pos_emb, idx, positions=positions)
        rope = None
        if self.config.pos == "rope":
            # (tables that cover the cache: `cover_positions`, called outside the compiled step)
            rope = (self.rope_cos[positions][:, None], self.rope_sin[positions][:, None])  # [B, 1, 1, D/2]
        cache_slots = torch.arange(keys[0].size(2), device=idx.device)
        visible = (cache_slots[None, :] >= pad_lengths[:, None]) & (cache_slots[None, :] <= slot)
        mask = visible[:, None, None, :]  # [B, 1, 1, S]
        cache = SlotWrite(keys, values, slot)
        for layer, block in enumerate(self.blocks):
            x = block(x, rope, mask, cache, layer)
        return self.lm_head(self.final_norm(x))[:, -1]

    def cover_positions(self, length: int) -> None:
        """RoPE tables of `length` positions (within the context length) before `decode_step` reads
        them: that step is compiled, and extends nothing itself."""
        if self.config.pos == "rope":
            self._rope_for(min(length, self.config.context_length))

    def _rope_for(self, length: int):
        """RoPE tables of at least `length` positions: the model's own, extended (and kept, within the
        context length: a model of a long context training on short sequences holds short tables) or,
        for generation past the context, made for the call."""
        if length > self.rope_cos.shape[0]:
            # doubled (within the context): decoding past the tables asked for one position more a token,
            # and each step built the whole table again (31 ms a token at 65k positions, a review)
            kept = length <= self.config.context_length
            made = min(self.config.context_length, max(length, 2 * self.rope_cos.shape[0])) if kept else length
            cos, sin = rope_tables(self.config.head_dim, made, self.config.rope_theta)
            cos, sin = cos.to(self.rope_cos.device), sin.to(self.rope_sin.device)
            if kept:
                self.rope_cos, self.rope_sin = cos, sin
            return cos, sin
        return self.rope_cos, self.rope_sin

    def forward(self, idx: torch.Tensor, targets: torch.Tensor | None = None, *, cache: KVCache | None = None,
                return_logits: bool = True, last_only: bool = False, documents: torch.Tensor | None = None):
        """`documents` [B, T]: each token's document (objectives.document_ids), which its attention
        stays within (--document-mask); positions still count from the window's start."""
        x = self._trunk(idx, cache=cache, documents=documents)
        if last_only:  # generation's prefill: the head of one position, not of the whole prompt
            if targets is not None:
                raise ValueError("last_only gives the last position's logits and takes no targets")
            return self.lm_head(x[:, -1:]), None
        if targets is not None and not return_logits and fused_loss.applies(x, self.lm_head.weight):
            return None, fused_loss.linear_cross_entropy(x, self.lm_head.weight, targets)  # no [B,T,V] tensor
        logits = self.lm_head(x)
        if targets is None:
            return logits, None
        loss = F.cross_entropy(logits.float().reshape(-1, logits.size(-1)), targets.reshape(-1), ignore_index=IGNORE_INDEX)
        # Not returned when not asked for: a compiled graph keeps each output whole, and [B, T, V]
        # logits that the loss alone never needs cost two such tensors (the H200's GPT-2-small step
        # held 3.2 GB more than nanoGPT's; on a CPU under --compile, 0.27 GB of 1.05 at 16 x 256 x 8192).
        return (logits if return_logits else None), loss

    @torch.no_grad()
    def token_nll(self, idx: torch.Tensor, targets: torch.Tensor) -> torch.Tensor:
        """[B, T] cross-entropy of each position against targets (0 where IGNORE_INDEX), for scoring.
        On a CPU the head and the loss run a chunk of positions at a time (no [B, T, V] logits), one
        sequence at a time: its chunks start at its own first position, so its values do not depend
        on the other rows (eval's --batch-size changes no bit; llmkit/eval/loglik.py)."""
        x = self._trunk(idx)
        if fused_loss.applies(x, self.lm_head.weight):
            return torch.stack([fused_loss.token_nll(row, self.lm_head.weight, row_targets) for row, row_targets in zip(x, targets)])
        return fused_loss.logits_nll(self.lm_head(x), targets)

    def hidden_states(self, idx: torch.Tensor, attention_mask: torch.Tensor | None = None) -> torch.Tensor:
        """Final-norm hidden states [B,T,C]; attention_mask [B,T] (1 real, 0 padding, either side)."""
        return self._trunk(idx, attention_mask=attention_mask)
