"""A classification head on a language model's final hidden state.

    SequenceClassifier(lm, num_labels)(idx, labels, attention_mask=mask) -> (logits [B, K], loss)
    SequenceClassifier.classify(idx, attention_mask=None) -> logits [B, K]   (what `llmkit eval` calls)

Inputs are `[BOS] text` RIGHT-padded. The pooled state is the last real token's for a causal
model (the only position that has seen the whole text) and the first token's (BOS, playing
BERT's [CLS]) for a masked-LM model, whose attention is bidirectional.

The classifier takes the language model's submodules as its own, under their own names, and
adds `classifier.weight` / `classifier.bias`: its state dict is the language model's plus the
head, so a classification checkpoint's model.safetensors is an ordinary checkpoint's with two
more tensors, and `llmkit.model.io.load_checkpoint` reads it back.
"""

from __future__ import annotations

import torch
import torch.nn as nn
import torch.nn.functional as F

from llmkit.model import cpu_gemm
from llmkit.model.sequence_grads import at_least_min_rows

HEAD_PREFIX = "classifier."


class SequenceClassifier(nn.Module):
    def __init__(self, lm: nn.Module, num_labels: int):
        super().__init__()
        # Kept outside the module tree: its children are adopted below, so names stay unprefixed.
        object.__setattr__(self, "lm", lm)
        for name, child in lm.named_children():
            self.add_module(name, child)
        self.config = lm.config
        self.num_labels = num_labels
        self.pooling = "first" if lm.config.objective == "mlm" else "last"
        self.classifier = cpu_gemm.Linear(lm.config.n_embd, num_labels)  # (a row's bits whatever the batch beside it)
        nn.init.normal_(self.classifier.weight, std=0.02)
        nn.init.zeros_(self.classifier.bias)

    def train(self, mode: bool = True):
        # Its children are ours and follow; its own flag gates the embedding dropout.
        self.lm.training = mode
        return super().train(mode)

    def _apply(self, fn, recurse=True):
        # The language model's own buffers (RoPE tables) move with us; its children are ours already.
        self.lm._apply(fn, recurse=False)
        return super()._apply(fn, recurse)

    def pooled(self, idx: torch.Tensor, attention_mask: torch.Tensor | None = None) -> torch.Tensor:
        if attention_mask is None:
            attention_mask = torch.ones_like(idx)
        # Right padding is invisible to a causal model's real tokens: only a bidirectional one
        # needs the mask (and the LSTM's masked path is a slow token-by-token loop).
        mask = attention_mask if self.pooling == "first" else None
        hidden = self.lm.hidden_states(idx, attention_mask=mask)
        if self.pooling == "first":
            return hidden[:, 0]
        last = attention_mask.long().sum(dim=1).clamp(min=1) - 1
        return hidden[torch.arange(idx.shape[0], device=idx.device), last]

    def classify(self, idx: torch.Tensor, attention_mask: torch.Tensor | None = None) -> torch.Tensor:
        pooled = self.pooled(idx, attention_mask)
        if not torch.is_grad_enabled():
            # the head's product at 16 rows or more whatever the batch, as training's (sequence_grads): at 1 to 8
            # rows a text's logits changed in the last bits with the texts beside it, so eval --batch-size moved them
            return at_least_min_rows(self.classifier, pooled)
        return self.classifier(pooled)

    def forward(self, idx: torch.Tensor, labels: torch.Tensor | None = None, *, attention_mask: torch.Tensor | None = None):
        logits = self.classify(idx, attention_mask)
        loss = F.cross_entropy(logits.float(), labels) if labels is not None else None
        return logits, loss

    def hidden_states(self, idx, attention_mask=None):
        return self.lm.hidden_states(idx, attention_mask=attention_mask)

    def num_params(self, non_embedding: bool = False) -> int:
        return self.lm.num_params(non_embedding) + sum(p.numel() for p in self.classifier.parameters())

    def flops_per_token(self, seq_len: int | None = None) -> int:
        return self.lm.flops_per_token(seq_len)


def head_spec(model: SequenceClassifier) -> dict:
    return {"type": "linear", "prefix": HEAD_PREFIX, "pooling": model.pooling, "num_labels": model.num_labels}
