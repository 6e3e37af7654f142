"""Per-sequence gradients (llmkit/model/sequence_grads.py, sequence_tree.py): the same bits
however a step's sequences are split, and the same values as autograd's usual gradient."""

from __future__ import annotations

import pytest
import torch

from llmkit.model.gpt import GPT, IGNORE_INDEX, ModelConfig
from llmkit.model.sequence_grads import per_sequence_gradients
from llmkit.model.sequence_tree import Block, SequenceTree, _collapse, _push, block_layout, merge_ranks, rows_tree

STYLES = {
    "llama": dict(n_kv_head=2),
    "gpt2": dict(norm="layernorm", pos="learned", activation="gelu", bias=True, n_kv_head=4),
    "mlm": dict(n_kv_head=2, objective="mlm"),
}


def _model(style: str, **extra) -> GPT:
    torch.manual_seed(0)
    config = ModelConfig(vocab_size=97, context_length=24, n_layer=2, n_head=4, n_embd=32, **STYLES[style], **extra)
    return GPT(config)


def _batch(sequences: int = 10, length: int = 24):
    g = torch.Generator().manual_seed(1)
    tokens = torch.randint(0, 97, (sequences, length + 1), generator=g)
    inputs, targets = tokens[:, :-1], tokens[:, 1:].clone()
    targets[2, :7] = IGNORE_INDEX  # a prompt without loss, as in SFT
    targets[5, 3:20] = IGNORE_INDEX
    return inputs, targets


def _tree_gradients(model: torch.nn.Module, inputs, targets, split: int, precision: str = "fp32") -> list[torch.Tensor]:
    params = [p for p in model.parameters() if p.requires_grad]
    tree, count = SequenceTree(), 0
    for start in range(0, len(inputs), split):
        stop = min(start + split, len(inputs))
        targets_here = (targets[start:stop] != IGNORE_INDEX).sum()
        with per_sequence_gradients(tree, start, stop - start), torch.autocast("cpu", torch.bfloat16, enabled=precision == "bf16"):
            loss = model(inputs[start:stop], targets[start:stop], return_logits=False)[1]
            loss.backward(targets_here.float())
        count += int(targets_here)
    assert all(p.grad is None for p in params), "a weight got its gradient the usual way"
    return [g / count for g in tree.gradients(params, sequences=len(inputs))]


@pytest.mark.parametrize("style", sorted(STYLES))
def test_every_split_gives_the_same_bits_and_autograds_values(style):
    model = _model(style)
    inputs, targets = _batch()
    # 10 sequences: runs of 4 completed across micro-batches (split 3) and a short last run
    reference = _tree_gradients(model, inputs, targets, split=10)
    for split in (1, 2, 3, 4, 5):
        grads = _tree_gradients(model, inputs, targets, split)
        assert all(torch.equal(a, b) for a, b in zip(reference, grads)), split
    # the same gradient as autograd's, to float rounding (not one formula with another order of sums)
    loss = model(inputs, targets, return_logits=False)[1]
    loss.backward()
    for (name, p), g in zip(model.named_parameters(), reference):
        assert torch.allclose(p.grad, g, rtol=1e-4, atol=1e-5 * float(p.grad.abs().max())), name


def test_bf16_autocast_splits_agree_to_the_bit():
    model = _model("llama")
    inputs, targets = _batch()
    reference = _tree_gradients(model, inputs, targets, split=10, precision="bf16")
    for split in (1, 3):
        grads = _tree_gradients(model, inputs, targets, split, precision="bf16")
        assert all(torch.equal(a, b) for a, b in zip(reference, grads)), split
    fp32 = _tree_gradients(model, inputs, targets, split=10)
    assert all(torch.allclose(a, b, rtol=0.1, atol=1e-3) for a, b in zip(reference, fp32))


def test_activation_checkpointing_recomputes_the_same_bits():
    from llmkit.train.parallelize import checkpoint_activations

    model = _model("gpt2")
    inputs, targets = _batch()
    reference = _tree_gradients(model, inputs, targets, split=10)
    checkpoint_activations(model)
    for split in (10, 3):
        assert all(torch.equal(a, b) for a, b in zip(reference, _tree_gradients(model, inputs, targets, split))), split


def test_lora_adapters_alone_get_gradients():
    from llmkit.finetune.lora import apply_lora

    model = _model("llama")
    apply_lora(model, ["q_proj", "down_proj"], rank=4, alpha=8)
    inputs, targets = _batch()
    trained = [name for name, p in model.named_parameters() if p.requires_grad]
    assert trained and all("lora" in name for name in trained)
    reference = _tree_gradients(model, inputs, targets, split=10)
    assert all(torch.equal(a, b) for a, b in zip(reference, _tree_gradients(model, inputs, targets, split=3)))
    assert any(float(g.abs().sum()) > 0 for g in reference)


def test_ranks_merged_equal_one_process():
    """Rank blocks gathered and merged in position order: the bits of one process's tree, for
    any world size and any number of sequences per rank (powers of two or not)."""
    g = torch.Generator().manual_seed(0)
    order_mattered = False
    for world in (2, 3, 4):
        for per_rank in (1, 2, 3, 5, 8):
            items = torch.randn(world * per_rank, 5, generator=g) * torch.logspace(-8, 8, 5)  # order-sensitive sums
            one: list[Block] = []
            for i, item in enumerate(items):
                _push(one, Block(i, 1, item.clone()))
            layouts, parts = [], []
            for rank in range(world):
                stack: list[Block] = []
                for i in range(rank * per_rank, (rank + 1) * per_rank):
                    _push(stack, Block(i, 1, items[i].clone()))
                layouts.append(block_layout(rank * per_rank, per_rank))
                assert [(b.start, b.size) for b in stack] == layouts[-1]
                parts.append([b.values for b in stack])
            merged = merge_ranks(layouts, parts)
            assert torch.equal(_collapse(merged), _collapse(one)), (world, per_rank)
            left_to_right = items[0].clone()
            for item in items[1:]:
                left_to_right += item
            order_mattered |= not torch.equal(left_to_right, _collapse(one))
    assert order_mattered  # the sums above can tell one order from another


def test_a_backward_not_seeded_with_the_target_count_is_refused():
    model = _model("llama")
    inputs, targets = _batch()
    with per_sequence_gradients(SequenceTree(), 0, len(inputs)):
        loss = model(inputs, targets, return_logits=False)[1]
    with pytest.raises(RuntimeError, match="seeded with its target count"):
        loss.backward()


def test_sparse_rows_follow_the_dense_tree():
    """An embedding's per-sequence rows, summed row by row over positions, equal the dense tree
    over whole per-sequence gradients (the rows a sequence lacks add zeros), to the bit."""
    g = torch.Generator().manual_seed(0)
    for sequences in (1, 5, 8, 11):
        dense = torch.randn(sequences, 9, 3, generator=g) * torch.logspace(-6, 6, 3)
        dense[torch.rand(sequences, 9, generator=g) < 0.6] = 0  # each sequence uses some rows
        stack: list[Block] = []
        for i in range(sequences):
            _push(stack, Block(i, 1, dense[i].clone()))
        used = dense.abs().sum(-1).nonzero()
        positions, rows = used[:, 0], used[:, 1]
        sparse = rows_tree(positions, rows, dense[positions, rows], torch.Size([9, 3]), (sequences - 1).bit_length())
        assert torch.equal(sparse, _collapse(stack)), sequences


# -- dropout masks (llmkit/model/sequence_dropout.py) --------------------------------------------------


def test_a_sequences_dropout_mask_depends_on_its_place_not_its_neighbours():
    import torch.nn.functional as F

    x = torch.ones(3, 64, 32)
    with per_sequence_gradients(SequenceTree(), 0, 3, dropout_key=7):
        together = F.dropout(x, 0.25)
    with per_sequence_gradients(SequenceTree(), 2, 1, dropout_key=7):
        alone = F.dropout(x[2:], 0.25)
    with per_sequence_gradients(SequenceTree(), 2, 1, dropout_key=8):  # another step
        later = F.dropout(x[2:], 0.25)
    assert torch.equal(together[2:], alone) and not torch.equal(alone, later)
    assert not torch.equal(together[0], together[1])
    assert set(together.unique().tolist()) == {0.0, float(torch.tensor(1 / 0.75))}
    assert abs(float((together == 0).float().mean()) - 0.25) < 0.02


@pytest.mark.parametrize("mask", ["causal", "bool", "gqa"])
def test_attention_with_dropout_is_the_attention(mask):
    """Keeping (almost) every weight, the per-sequence attention is F.scaled_dot_product_attention."""
    import torch.nn.functional as F

    g = torch.Generator().manual_seed(0)
    q = torch.randn(2, 4, 16, 8, generator=g)
    k, v = (torch.randn(2, 2 if mask == "gqa" else 4, 16, 8, generator=g) for _ in range(2))
    keep = torch.rand(2, 1, 16, 16, generator=g) > 0.3
    keep[..., 0] = True
    kwargs = dict(attn_mask=keep) if mask == "bool" else dict(is_causal=True, enable_gqa=mask == "gqa")
    expected = F.scaled_dot_product_attention(q, k, v, **kwargs)
    with per_sequence_gradients(SequenceTree(), 0, 2):
        ours = F.scaled_dot_product_attention(q, k, v, dropout_p=1e-12, **kwargs)
        dropped = F.scaled_dot_product_attention(q, k, v, dropout_p=0.5, **kwargs)
    assert torch.allclose(ours, expected, atol=1e-6)
    assert not torch.allclose(dropped, expected, atol=1e-3)


@pytest.mark.parametrize("style", ["llama", "gpt2"])
def test_three_threads_give_one_threads_bits(style):
    """A step's gradients on 3 threads equal one thread's (pretraining's thread-count test compares
    1 and 2, whose splits of its shapes happen to agree: GPT-2's GELU gave other gradients on 3
    threads until 2026-12-06). 230 tokens, so each activation call is split among the threads; heads
    of 16 (PyTorch's attention kernel gives heads of 8 and 15 to 31 keys other bits on 2 threads)."""
    torch.manual_seed(0)
    shape = {**STYLES[style], "n_head": 2, "n_kv_head": 1 if style == "llama" else 2}
    model = GPT(ModelConfig(vocab_size=97, context_length=24, n_layer=2, n_embd=32, **shape))
    inputs, targets = _batch(length=23)
    threads = torch.get_num_threads()
    runs = []
    try:
        for count in (1, 3):
            torch.set_num_threads(count)
            runs.append(_tree_gradients(model, inputs, targets, split=10))
    finally:
        torch.set_num_threads(threads)
    assert all(torch.equal(a, b) for a, b in zip(*runs))
