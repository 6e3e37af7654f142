"""An LSTM language model baseline with the same interface as the Transformer (see gpt.py).

Its "cache" is the recurrent state: generation feeds one token at a time and never recomputes
the prefix. With left padding (`pad_lengths`) the state is simply not updated on padded
positions, so every row starts from the zero state at its first real token.
"""

from __future__ import annotations

import torch
import torch.nn as nn
import torch.nn.functional as F

from llmkit.model import cpu_gemm
from llmkit.model.gpt import IGNORE_INDEX, ModelConfig


class LSTMState:
    """Hidden and cell state [n_layer, B, n_embd]; `pos` counts the slots fed so far."""

    def __init__(self, config: ModelConfig, batch_size: int, max_len: int, pad_lengths, device, dtype):
        shape = (config.n_layer, batch_size, config.n_embd)
        self.h = torch.zeros(shape, device=device, dtype=dtype)
        self.c = torch.zeros(shape, device=device, dtype=dtype)
        self.max_len = max_len
        self.batch_size = batch_size
        self.pos = 0
        if pad_lengths is None:
            pad_lengths = torch.zeros(batch_size, dtype=torch.long)
        self.pad_lengths = torch.as_tensor(pad_lengths, dtype=torch.long, device=device)

    def reset(self) -> None:
        self.pos = 0
        self.h.zero_()
        self.c.zero_()

    def reorder(self, rows: torch.Tensor) -> None:
        """Row i becomes a copy of row `rows[i]` (KVCache.reorder's interface)."""
        rows = rows.to(self.h.device)
        self.h, self.c = self.h.index_select(1, rows), self.c.index_select(1, rows)
        self.pad_lengths = self.pad_lengths.index_select(0, rows.to(self.pad_lengths.device))

    def adopt(self, row: int, source: LSTMState, source_row: int, n: int, end: int) -> None:
        """Row `row` takes `source`'s state of row `source_row` (KVCache.adopt's interface: the
        state holds no slots, so `n` and `end` do not matter)."""
        self.h[:, row] = source.h[:, source_row]
        self.c[:, row] = source.c[:, source_row]


class LSTMLM(nn.Module):
    def __init__(self, config: ModelConfig):
        super().__init__()
        if config.arch != "lstm":
            raise ValueError(f"LSTMLM needs arch='lstm', got {config.arch!r}")
        if config.objective != "clm":
            raise ValueError("the LSTM model is a left-to-right language model; use objective 'clm'")
        self.config = config
        self.tok_emb = nn.Embedding(config.vocab_size, config.n_embd)
        self.drop = nn.Dropout(config.dropout)
        self.lstm = nn.LSTM(
            config.n_embd, config.n_embd, num_layers=config.n_layer, batch_first=True,
            dropout=config.dropout if config.n_layer > 1 else 0.0,
        )
        self.lm_head = cpu_gemm.Linear(config.n_embd, config.vocab_size, bias=False)
        if config.tie_embeddings:
            self.lm_head.weight = self.tok_emb.weight
        nn.init.normal_(self.tok_emb.weight, std=0.1)
        if not config.tie_embeddings:
            nn.init.normal_(self.lm_head.weight, std=0.02)

    def num_params(self, non_embedding: bool = False) -> int:
        return sum(p.numel() for p in self.parameters())

    def flops_per_token(self, seq_len: int | None = None) -> int:
        return int(6 * self.num_params())

    def new_cache(self, batch_size: int, max_len: int | None = None, pad_lengths=None) -> LSTMState:
        weight = self.tok_emb.weight
        return LSTMState(self.config, batch_size, max_len or self.config.context_length, pad_lengths, weight.device, weight.dtype)

    def _run(self, x: torch.Tensor, state: tuple | None, keep: torch.Tensor | None):
        """Run the LSTM; where keep[b, t] is False the state passes through unchanged."""
        if keep is None or bool(keep.all()):
            return self.lstm(x, state)
        B, T, _ = x.shape
        L, H = self.config.n_layer, self.config.n_embd
        if state is None:
            zeros = x.new_zeros(L, B, H)
            state = (zeros, zeros.clone())
        h, c = state
        outputs = []
        for t in range(T):
            out, (h_new, c_new) = self.lstm(x[:, t : t + 1], (h, c))
            k = keep[:, t].view(1, B, 1)
            h, c = torch.where(k, h_new, h), torch.where(k, c_new, c)
            outputs.append(out)
        return torch.cat(outputs, dim=1), (h, c)

    def _trunk(self, idx, cache: LSTMState | None = None, attention_mask=None):
        B, T = idx.shape
        x = self.drop(self.tok_emb(idx))
        keep, state = None, None
        if cache is not None:
            if cache.pos + T > cache.max_len:
                raise ValueError(f"cache full: {cache.pos} + {T} tokens > max_len {cache.max_len}")
            slots = torch.arange(cache.pos, cache.pos + T, device=idx.device)
            keep = slots[None, :] >= cache.pad_lengths.to(idx.device)[:, None]
            state = (cache.h, cache.c)
        elif attention_mask is not None:
            keep = attention_mask.to(device=idx.device, dtype=torch.bool)
        out, (h, c) = self._run(x, state, keep)
        if cache is not None:
            cache.h, cache.c = h.detach(), c.detach()
            cache.pos += T
        return self.drop(out)

    def forward(self, idx: torch.Tensor, targets: torch.Tensor | None = None, *, cache: LSTMState | None = None,
                return_logits: bool = True, last_only: bool = False):
        # (return_logits: GPT's contract; the logits are always returned)
        x = self._trunk(idx, cache=cache)
        if last_only:  # generation's prefill: the head of the last position only
            if targets is not None:
                raise ValueError("last_only gives the last position's logits and takes no targets")
            return self.lm_head(x[:, -1:]), None
        logits = self.lm_head(x)
        loss = None
        if targets is not None:
            loss = F.cross_entropy(logits.float().reshape(-1, logits.size(-1)), targets.reshape(-1), ignore_index=IGNORE_INDEX)
        return logits, loss

    def hidden_states(self, idx: torch.Tensor, attention_mask: torch.Tensor | None = None) -> torch.Tensor:
        return self._trunk(idx, attention_mask=attention_mask)
