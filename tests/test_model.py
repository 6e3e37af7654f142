"""The model library: shapes, KV cache and left padding equal full forward, presets, GQA, LSTM."""

from __future__ import annotations

import pytest
import torch

from llmkit.model.gpt import GPT, ModelConfig
from llmkit.model.presets import PRESETS, build_model, resolve_model_config

torch.set_num_threads(1)

VARIANTS = {
    "llama": dict(norm="rmsnorm", pos="rope", activation="swiglu", n_kv_head=2, bias=False),
    "gpt2": dict(norm="layernorm", pos="learned", activation="gelu", bias=True, tie_embeddings=False),
    "lstm": dict(arch="lstm", n_head=1),
}


def small(**kw) -> ModelConfig:
    base = dict(vocab_size=97, context_length=32, n_layer=2, n_head=4, n_embd=32)
    base.update(kw)
    return ModelConfig(**base)


def make(variant: str, seed: int = 0):
    torch.manual_seed(seed)
    return build_model(small(**VARIANTS[variant])).eval()


@pytest.mark.parametrize("variant", VARIANTS)
def test_forward_shapes_and_loss(variant):
    model = make(variant)
    idx = torch.randint(0, 97, (3, 16))
    logits, loss = model(idx)
    assert logits.shape == (3, 16, 97) and loss is None
    _, loss = model(idx, targets=torch.randint(0, 97, (3, 16)))
    # A fresh model predicts nearly uniformly: loss close to ln(V).
    assert abs(loss.item() - torch.log(torch.tensor(97.0)).item()) < 0.5
    assert model.hidden_states(idx).shape == (3, 16, 32)


@pytest.mark.parametrize("variant", VARIANTS)
def test_kv_cache_matches_full_forward(variant):
    model = make(variant)
    idx = torch.randint(0, 97, (2, 20))
    full, _ = model(idx)
    cache = model.new_cache(2, 24)
    pieces = [model(idx[:, :7], cache=cache)[0]]  # prefill, then one token at a time
    for t in range(7, 20):
        pieces.append(model(idx[:, t : t + 1], cache=cache)[0])
    assert cache.pos == 20
    torch.testing.assert_close(torch.cat(pieces, dim=1), full, atol=1e-5, rtol=1e-4)


@pytest.mark.parametrize("variant", VARIANTS)
def test_left_padded_batch_equals_rows_alone(variant):
    model = make(variant)
    rows = [torch.randint(3, 97, (n,)) for n in (9, 5, 12)]
    width, steps = 12, 4
    pads = torch.tensor([width - len(r) for r in rows])
    batch = torch.stack([torch.cat([torch.full((width - len(r),), 2), r]) for r in rows])
    cache = model.new_cache(3, width + steps, pad_lengths=pads)
    logits, _ = model(batch, cache=cache)
    next_tokens = torch.randint(3, 97, (3, steps))
    batched_steps = [model(next_tokens[:, s : s + 1], cache=cache)[0][:, -1] for s in range(steps)]
    for b, row in enumerate(rows):
        single_cache = model.new_cache(1, len(row) + steps)
        single, _ = model(row[None], cache=single_cache)
        torch.testing.assert_close(logits[b, pads[b] :], single[0], atol=1e-5, rtol=1e-4)
        for s in range(steps):
            step_logits = model(next_tokens[b : b + 1, s : s + 1], cache=single_cache)[0][0, -1]
            torch.testing.assert_close(batched_steps[s][b], step_logits, atol=1e-5, rtol=1e-4)


@pytest.mark.parametrize("variant", VARIANTS)
def test_hidden_states_with_attention_mask_ignore_padding(variant):
    model = make(variant)
    row = torch.randint(3, 97, (6,))
    alone = model.hidden_states(row[None])[0]
    left = torch.cat([torch.full((3,), 2), row])[None]
    right = torch.cat([row, torch.full((3,), 2)])[None]
    mask_left = torch.tensor([[0, 0, 0] + [1] * 6])
    mask_right = torch.tensor([[1] * 6 + [0, 0, 0]])
    torch.testing.assert_close(model.hidden_states(left, mask_left)[0, 3:], alone, atol=1e-5, rtol=1e-4)
    torch.testing.assert_close(model.hidden_states(right, mask_right)[0, :6], alone, atol=1e-5, rtol=1e-4)


def test_causal_vs_bidirectional():
    torch.manual_seed(0)
    clm = GPT(small()).eval()
    mlm = GPT(small(objective="mlm")).eval()
    mlm.load_state_dict(clm.state_dict())
    idx = torch.randint(0, 97, (1, 10))
    changed = idx.clone()
    changed[0, -1] = (idx[0, -1] + 1) % 97
    # Causal: changing the last token leaves earlier logits alone; bidirectional: it does not.
    torch.testing.assert_close(clm(idx)[0][:, :-1], clm(changed)[0][:, :-1])
    assert not torch.allclose(mlm(idx)[0][:, :-1], mlm(changed)[0][:, :-1])
    with pytest.raises(ValueError, match="KV cache"):
        mlm(idx, cache=mlm.new_cache(1, 16))


def test_gqa_reduces_kv_parameters_and_tied_embeddings_share_storage():
    mha = GPT(small(n_kv_head=4))
    gqa = GPT(small(n_kv_head=1))
    assert gqa.blocks[0].attn.kv_proj.weight.shape[0] == 2 * 8  # one KV head of size 8
    assert gqa.num_params() < mha.num_params()
    tied = GPT(small(tie_embeddings=True))
    assert tied.lm_head.weight.data_ptr() == tied.tok_emb.weight.data_ptr()


def test_gpt2_preset_is_124m_and_flops():
    config = resolve_model_config("gpt2", vocab_size=50257)
    with torch.device("meta"):
        model = build_model(config)
    assert 124_000_000 < model.num_params() < 124_600_000
    # 6N + 12 L C T, with N excluding position embeddings.
    n = model.num_params(non_embedding=True)
    assert model.flops_per_token() == 6 * n + 12 * 12 * 768 * 1024


def test_presets_build_and_overrides():
    for name in PRESETS:
        config = resolve_model_config(name, vocab_size=1000)
        assert config.vocab_size == 1000
    config = resolve_model_config("tiny", vocab_size=500, overrides={"n_layer": 2, "norm": "layernorm", "n_embd": None})
    assert config.n_layer == 2 and config.norm == "layernorm" and config.n_embd == PRESETS["tiny"]["n_embd"]
    from llmkit.errors import UsageError

    with pytest.raises(UsageError, match="is not a model preset"):
        resolve_model_config("huge", vocab_size=10)
    with pytest.raises(UsageError, match="divisible"):  # an option's value: exit 2, as every bad flag
        resolve_model_config("tiny", vocab_size=10, overrides={"n_embd": 100, "n_head": 3})
    # an LSTM is one config whichever preset it came from: a Transformer preset's heads, norm and
    # MLP are no part of it (`--model tiny --arch lstm` could not be averaged with `--model lstm`)
    shape = {"n_layer": 1, "n_embd": 32, "context_length": 64}
    lstm = resolve_model_config("lstm", vocab_size=300, overrides=shape)
    for preset in ("tiny", "gpt2-tiny", "mini"):
        assert resolve_model_config(preset, vocab_size=300, overrides={**shape, "arch": "lstm"}) == lstm, preset


@pytest.mark.parametrize("vocab_size", [97, 70_000])  # one chunk; several chunks with a short last one
def test_fused_head_and_loss_equal_the_logits_and_cross_entropy(vocab_size, monkeypatch):
    import torch.nn.functional as F

    from llmkit.model import fused_loss

    torch.manual_seed(0)
    hidden = torch.randn(2, 75, 24, dtype=torch.float64, requires_grad=True)
    weight = (0.3 * torch.randn(vocab_size, 24, dtype=torch.float64)).requires_grad_()
    targets = torch.randint(0, vocab_size, (2, 75))
    targets[0, :9] = fused_loss.IGNORE_INDEX  # prompt tokens without targets (SFT, MLM)
    chunks = -(-150 // fused_loss.chunk_tokens(vocab_size))
    assert (chunks > 1) == (vocab_size > 100) and 150 % fused_loss.chunk_tokens(vocab_size) != 0
    expected = F.cross_entropy((hidden @ weight.t()).flatten(0, 1), targets.flatten(), ignore_index=fused_loss.IGNORE_INDEX)
    (3 * expected).backward()
    expected_grads = hidden.grad.clone(), weight.grad.clone()
    hidden.grad = weight.grad = None
    got = fused_loss.linear_cross_entropy(hidden, weight, targets)
    (3 * got).backward()
    assert torch.allclose(got, expected, rtol=1e-12, atol=0)
    assert torch.allclose(hidden.grad, expected_grads[0], rtol=1e-10, atol=1e-14)
    assert torch.allclose(weight.grad, expected_grads[1], rtol=1e-10, atol=1e-14)
    with torch.no_grad():  # validation: the loss alone
        assert torch.allclose(fused_loss.linear_cross_entropy(hidden, weight, targets), expected, rtol=1e-12, atol=0)


@pytest.mark.parametrize("vocab_size", [97, 70_000])
def test_per_token_scoring_equals_the_logits_and_cross_entropy(vocab_size):
    """What perplexity and multiple choice score with (llmkit/eval/loglik.py): each position's
    loss, chunk by chunk, equals cross-entropy over the whole logits; no target, zero."""
    import torch.nn.functional as F

    from llmkit.model import fused_loss

    torch.manual_seed(0)
    hidden, weight = torch.randn(150, 24, dtype=torch.float64), 0.3 * torch.randn(vocab_size, 24, dtype=torch.float64)
    targets = torch.randint(0, vocab_size, (150,))
    targets[:9] = fused_loss.IGNORE_INDEX
    expected = F.cross_entropy(hidden @ weight.t(), targets, ignore_index=fused_loss.IGNORE_INDEX, reduction="none")
    got = fused_loss.token_nll(hidden, weight, targets)
    assert got.dtype == torch.float64 and torch.allclose(got, expected, rtol=1e-12, atol=1e-12)
    assert not got[:9].any()
    with torch.autocast("cpu", dtype=torch.bfloat16):  # the product in bf16, as the autocast head's
        low = F.cross_entropy((hidden.float() @ weight.float().t()).float(), targets, ignore_index=-100, reduction="none")
        got = fused_loss.token_nll(hidden.float(), weight.float(), targets)
    assert got.dtype == torch.float32 and torch.allclose(got, low, rtol=1e-5, atol=1e-5)


def test_a_gpt_scores_each_position_as_its_logits_do():
    """GPT.token_nll (eval's scoring) equals cross-entropy over the model's own logits, [B, T], no target zero."""
    import torch.nn.functional as F

    model = make("gpt2").double()
    idx = torch.randint(0, model.config.vocab_size, (3, 11))
    targets = torch.randint(0, model.config.vocab_size, (3, 11))
    targets[1, :4] = -100
    logits, _ = model(idx)
    expected = F.cross_entropy(logits.flatten(0, 1), targets.flatten(), ignore_index=-100, reduction="none").view(3, 11)
    got = model.token_nll(idx, targets)
    assert got.shape == (3, 11) and torch.allclose(got, expected, rtol=1e-12, atol=1e-12)
    assert not got[1, :4].any() and got[1, 4:].all()


@pytest.mark.parametrize("trained", ["hidden", "weight"])
def test_fused_head_and_loss_skips_the_gradient_of_a_frozen_input(trained):
    """LoRA freezes the (tied) head: its gradient is not made; the other input's is unchanged."""
    from llmkit.model import fused_loss

    torch.manual_seed(0)
    hidden = torch.randn(40, 16, dtype=torch.float64, requires_grad=trained == "hidden")
    weight = torch.randn(50, 16, dtype=torch.float64, requires_grad=trained == "weight")
    targets = torch.randint(0, 50, (40,))
    targets[:30] = fused_loss.IGNORE_INDEX
    both = hidden.detach().requires_grad_(), weight.detach().requires_grad_()
    fused_loss.linear_cross_entropy(*both, targets).backward()
    fused_loss.linear_cross_entropy(hidden, weight, targets).backward()
    frozen, learned = (weight, hidden) if trained == "hidden" else (hidden, weight)
    assert frozen.grad is None
    assert torch.equal(learned.grad, both[0 if trained == "hidden" else 1].grad)
    if trained == "hidden":
        assert not learned.grad[:30].any() and learned.grad[30:].abs().sum() > 0  # no target, no gradient


def test_loss_alone_returns_no_logits_off_the_fused_path(monkeypatch):
    """Where the fused head does not apply (GPU, torch.compile, tensor parallelism) the logits are
    still made, but not returned when only the loss is asked for: a compiled graph keeps each of its
    outputs whole, and [B, T, V] logits held for nothing cost a step two such tensors."""
    from llmkit.model import fused_loss

    model = make("gpt2")
    idx, targets = torch.randint(0, 97, (3, 16)), torch.randint(0, 97, (3, 16))
    monkeypatch.setattr(fused_loss, "applies", lambda hidden, weight: False)
    logits, loss = model(idx, targets)
    none, loss_alone = model(idx, targets, return_logits=False)
    assert logits.shape == (3, 16, 97) and none is None
    assert torch.equal(loss_alone, loss)
    assert torch.equal(loss, torch.nn.functional.cross_entropy(logits.flatten(0, 1), targets.flatten()))


@pytest.mark.parametrize("variant", ["gpt2", "llama"])
def test_one_product_for_q_and_kv_computes_the_two(variant, monkeypatch):
    """The GPU's q/k/v path (one product over both weights), forced on a CPU: the same logits and
    the same gradients for q_proj and kv_proj as their two products, GQA included."""
    import llmkit.model.gpt as gpt

    idx, targets = torch.randint(0, 97, (3, 16)), torch.randint(0, 97, (3, 16))
    results = []
    for fused in (False, True):
        model = make(variant).train()
        calls = []
        monkeypatch.setattr(gpt, "fuse_qkv", lambda x: calls.append(x.shape) or fused)
        logits, loss = model(idx, targets)
        loss.backward()
        attn = model.blocks[0].attn
        results.append((logits, attn.q_proj.weight.grad, attn.kv_proj.weight.grad, model.blocks[1].attn.kv_proj.weight.grad))
        assert len(calls) == 2  # asked once a layer
    for split, one in zip(*results):
        assert torch.allclose(split, one, rtol=1e-5, atol=1e-6)
    # bf16 weights (FSDP2's gathered ones under its mixed precision) keep two products: the
    # concatenation would be a copy kept to the backward that FSDP never frees
    model = make(variant).train().to(torch.bfloat16)
    concatenated = []
    cat = torch.cat
    monkeypatch.setattr(torch, "cat", lambda tensors, *a, **k: concatenated.append(
        any(t is model.blocks[0].attn.q_proj.weight for t in tensors)) or cat(tensors, *a, **k))
    model(idx, targets)[1].backward()
    assert not any(concatenated)


def test_fused_head_and_loss_makes_no_gradient_under_no_grad(monkeypatch):
    """Validation runs under no_grad, which a Function's needs_input_grad does not see: the chunks
    got gradient buffers to fill (a head-sized product more per chunk, 2x a validation batch)."""
    from llmkit.model import fused_loss

    torch.manual_seed(0)
    hidden, weight = torch.randn(40, 16, requires_grad=True), torch.randn(50, 16, requires_grad=True)
    targets = torch.randint(0, 50, (40,))
    asked = []
    chunk = fused_loss._chunk
    monkeypatch.setattr(fused_loss, "_chunk", lambda *a, **k: asked.append((a[5], a[6])) or chunk(*a, **k))
    with torch.no_grad():
        loss = fused_loss.linear_cross_entropy(hidden, weight, targets)
    assert asked and all(rows is None and weight_grad is None for rows, weight_grad in asked)
    assert torch.equal(loss, fused_loss.linear_cross_entropy(hidden, weight, targets).detach())


def test_fused_head_and_loss_under_bf16_autocast_match_the_autocast_head():
    """--precision bf16 on CPU: the fused path's products run in bf16 like the autocast head's, so
    loss and gradients agree with logits-then-cross-entropy under autocast to bf16 rounding, and
    the gradients stay fp32."""
    import torch.nn.functional as F

    from llmkit.model import fused_loss

    torch.manual_seed(0)
    hidden = torch.randn(2, 300, 64, requires_grad=True)
    weight = (0.3 * torch.randn(9000, 64)).requires_grad_()  # several chunks
    targets = torch.randint(0, 9000, (2, 300))
    targets[1, :20] = fused_loss.IGNORE_INDEX
    with torch.autocast("cpu", dtype=torch.bfloat16):
        expected = F.cross_entropy((hidden @ weight.t()).float().flatten(0, 1), targets.flatten(), ignore_index=fused_loss.IGNORE_INDEX)
    expected.backward()
    expected_grads = hidden.grad.clone(), weight.grad.clone()
    hidden.grad = weight.grad = None
    with torch.autocast("cpu", dtype=torch.bfloat16):
        assert fused_loss.applies(hidden, weight)
        got = fused_loss.linear_cross_entropy(hidden, weight, targets)
    got.backward()
    assert got.dtype == torch.float32 and hidden.grad.dtype == weight.grad.dtype == torch.float32
    assert torch.allclose(got, expected, rtol=1e-3)
    for ours, theirs in zip((hidden.grad, weight.grad), expected_grads):
        assert (ours - theirs).norm() / theirs.norm() < 2e-2
    fp32 = fused_loss.linear_cross_entropy(hidden.detach(), weight.detach(), targets)
    assert got.item() != fp32.item()  # the products really ran in bf16


@pytest.mark.parametrize("variant", ["llama", "gpt2"])
def test_training_call_gives_the_loss_and_gradients_of_the_logits_path(variant):
    model = make(variant).train()
    idx, targets = torch.randint(0, 97, (3, 16)), torch.randint(0, 97, (3, 16))
    logits, loss = model(idx, targets)
    loss.backward()
    expected = {name: p.grad.clone() for name, p in model.named_parameters()}
    model.zero_grad(set_to_none=True)
    none, fused = model(idx, targets, return_logits=False)
    fused.backward()
    assert none is None and torch.allclose(fused, loss, rtol=1e-6)
    for name, p in model.named_parameters():
        assert torch.allclose(p.grad, expected[name], rtol=1e-4, atol=1e-7), name


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
def test_in_place_rope_and_swiglu_equal_the_plain_formulas_to_the_bit(dtype):
    """fused_ops writes the gradients' halves in place (no torch.cat; SwiGLU's forward too) with the
    same operations in the same order: values and gradients equal the plain formulas exactly."""
    from llmkit.model.fused_ops import apply_rope, rope_reference, swiglu, swiglu_reference
    from llmkit.model.gpt import rope_tables

    torch.manual_seed(0)
    cos, sin = rope_tables(16, 12, 10000.0)
    per_row = (cos[None, None].repeat(3, 1, 1, 1) * 0.9, sin[None, None].repeat(3, 1, 1, 1) * 1.1)  # left-padded rows
    for tables in ((cos[None, None], sin[None, None]), per_row):
        # q as the model makes it: a [B, T, H, D] projection viewed as [B, H, T, D]
        x = torch.randn(3, 12, 4, 16, dtype=dtype).transpose(1, 2).requires_grad_()
        grad = torch.randn(3, 4, 12, 16, dtype=dtype)
        ours, plain = apply_rope(x, *tables), rope_reference(x, *tables)
        assert ours.dtype == dtype and torch.equal(ours, plain)
        assert torch.equal(torch.autograd.grad(ours, x, grad)[0], torch.autograd.grad(plain, x, grad)[0])
        with torch.no_grad():
            assert torch.equal(apply_rope(x, *tables), plain)
    h = torch.randn(2, 5, 24, dtype=dtype, requires_grad=True)
    grad = torch.randn(2, 5, 12, dtype=dtype)
    ours, plain = swiglu(h), swiglu_reference(h)
    assert torch.equal(ours, plain)
    assert torch.equal(torch.autograd.grad(ours, h, grad)[0], torch.autograd.grad(plain, h, grad)[0])


@pytest.mark.parametrize("family", ["llama", "gpt2"])
def test_a_meta_built_model_materialised_part_by_part_equals_the_one_process_model(family, tmp_path):
    """The model-parallel path builds on the meta device and makes each parameter alone
    (llmkit.train.parallelize.materialize): the same values, ties and RoPE tables as a CPU build
    with the same seed, and, resuming, the checkpoint's values read one tensor at a time."""
    from llmkit.model.gpt import GPT, ModelConfig
    from llmkit.model.io import save_weights
    from llmkit.train.parallelize import materialize

    style = dict(norm="rmsnorm", pos="rope", activation="swiglu", bias=False) if family == "llama" else \
        dict(norm="layernorm", pos="learned", activation="gelu", bias=True)
    config = ModelConfig(vocab_size=97, context_length=32, n_layer=2, n_head=4, n_kv_head=2, n_embd=32, **style)
    torch.manual_seed(3)
    whole = GPT(config)
    torch.manual_seed(3)
    with torch.device("meta"):
        split = GPT(config)
    materialize(split, split, torch.device("cpu"), tp=1)
    assert split.lm_head.weight is split.tok_emb.weight and whole.lm_head.weight is whole.tok_emb.weight
    expected, got = whole.state_dict(keep_vars=True), split.state_dict(keep_vars=True)
    assert expected.keys() == got.keys() and all(torch.equal(expected[k], got[k]) for k in expected)
    if family == "llama":
        assert torch.equal(split.rope_cos, whole.rope_cos) and torch.equal(split.rope_sin, whole.rope_sin)
    torch.manual_seed(4)
    assert not torch.equal(GPT(config).tok_emb.weight, whole.tok_emb.weight)  # the seed matters
    # resuming: the values come from the checkpoint's file
    with torch.no_grad():
        for p in whole.parameters():
            p.add_(1.0)
    save_weights(whole, tmp_path)
    with torch.device("meta"):
        resumed = GPT(config)
    materialize(resumed, resumed, torch.device("cpu"), tp=1, weights=tmp_path / "model.safetensors")
    expected, got = whole.state_dict(), resumed.state_dict()
    assert all(torch.equal(expected[k], got[k]) for k in expected) and resumed.lm_head.weight is resumed.tok_emb.weight


def test_building_and_running_a_model_does_not_import_sympy():
    """Meta tensors' Python paths (Module.to_empty, torch.broadcast_shapes) import sympy and
    torch.fx on first use, 0.3 s of every llmkit process; the model avoids them (a fresh process)."""
    import subprocess
    import sys

    code = (
        "import sys, torch\n"
        "from llmkit.model.gpt import GPT, ModelConfig\n"
        "config = ModelConfig(vocab_size=97, context_length=32, n_layer=1, n_head=2, n_embd=16)\n"
        "model = GPT(config)\n"
        "idx = torch.randint(0, 97, (2, 8))\n"
        "model(idx, idx)[1].backward()\n"
        "with torch.no_grad():\n"
        "    model(idx)\n"
        "print('sympy' in sys.modules)\n"
    )
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert result.stdout.strip() == "False", result.stdout + result.stderr


@pytest.mark.parametrize("tie", [True, False])
def test_flops_count_the_parameters_a_tokens_matrix_products_use(tie):
    """6N + 12LCT with N the matrix products' parameters: a tied embedding once (it is the head),
    an untied one not at all (a lookup; its head counts), learned positions never."""
    from llmkit.model.gpt import GPT, ModelConfig

    config = ModelConfig(vocab_size=300, n_layer=2, n_embd=32, n_head=2, context_length=64, pos="learned",
                         tie_embeddings=tie)
    with torch.device("meta"):
        model = GPT(config)
    total = sum(p.numel() for p in model.parameters())
    products = total - model.pos_emb.weight.numel() - (0 if tie else model.tok_emb.weight.numel())
    assert model.flops_per_token(64) == 6 * products + 12 * 2 * 32 * 64


def test_a_classifier_switches_its_language_models_mode_too():
    """The wrapped model's own flag gates its embedding dropout: wrapped in eval mode (as a loaded
    checkpoint is) and trained, the classifier must drop there as well."""
    from llmkit.model.classifier import SequenceClassifier
    from llmkit.model.gpt import GPT, ModelConfig

    torch.manual_seed(0)
    lm = GPT(ModelConfig(vocab_size=97, context_length=16, n_layer=1, n_head=2, n_embd=32, dropout=0.5)).eval()
    classifier = SequenceClassifier(lm, 2).train()
    assert classifier.lm.training and all(m.training for m in classifier.modules())
    idx = torch.randint(0, 97, (2, 8))
    assert not torch.equal(classifier.hidden_states(idx), classifier.hidden_states(idx))  # dropout draws
    classifier.eval()
    assert not classifier.lm.training and torch.equal(classifier.hidden_states(idx), classifier.hidden_states(idx))


def test_a_few_targets_give_the_same_gradients_on_one_thread_and_two():
    """An MLM sequence or a short SFT response has fewer than 16 targets: the head's products are
    padded to 16 rows, and each goes where a row's bits do not follow the thread count (the rows'
    gradient went to MKL, whose bits did on an Intel CPU, at the tiny preset's 1,024 x 128 head)."""
    from llmkit.model import fused_loss

    torch.manual_seed(0)
    hidden, weight = torch.randn(64, 128, requires_grad=True), torch.randn(1024, 128, requires_grad=True)
    targets = torch.full((64,), fused_loss.IGNORE_INDEX)
    targets[::7] = torch.randint(0, 1024, (10,))  # 10 of 64 positions scored
    threads = torch.get_num_threads()
    grads = []
    try:
        for n in (1, 2):
            torch.set_num_threads(n)
            hidden.grad = weight.grad = None
            fused_loss.linear_cross_entropy(hidden, weight, targets).backward()
            grads.append((hidden.grad.clone(), weight.grad.clone()))
    finally:
        torch.set_num_threads(threads)
    assert all(torch.equal(a, b) for a, b in zip(*grads))


ACTIVATION_SHAPES = [(1, 248, 512), (3, 87, 1000), (16, 87, 342), (2, 511, 3072), (1, 9, 40000), (3, 5000, 7)]


@pytest.mark.parametrize("shape", ACTIVATION_SHAPES, ids=lambda s: "x".join(map(str, s)))
def test_activations_give_one_threads_bits_on_any_thread_count(shape):
    """GELU, SiLU and their backwards equal PyTorch's own on one thread, on 2 to 16 threads, for a
    contiguous tensor and for SwiGLU's gate (a strided half): PyTorch's kernels give the last
    elements of each thread's run the scalar formula, so their bits followed the thread count
    (llmkit/model/thread_invariant.py, which leans on how PyTorch splits an elementwise call)."""
    import torch.nn.functional as F

    from llmkit.model.thread_invariant import gelu_tanh, silu, silu_backward_into

    torch.manual_seed(0)
    h, grad = torch.randn(*shape[:-1], 2 * shape[-1]) * 3, torch.randn(shape)
    gate, x = h.chunk(2, dim=-1)[0], h[..., :shape[-1]].contiguous().requires_grad_()

    def gelu_gradient(function):
        x.grad = None
        function(x).backward(grad)
        return x.grad

    cases = {  # what llmkit computes, what PyTorch computes
        "gelu": (lambda: gelu_tanh(x.detach()), lambda: F.gelu(x.detach(), approximate="tanh")),
        "gelu backward": (lambda: gelu_gradient(gelu_tanh), lambda: gelu_gradient(lambda t: F.gelu(t, approximate="tanh"))),
        "silu": (lambda: silu(x.detach()), lambda: F.silu(x.detach())),
        "silu of a strided half": (lambda: silu(gate), lambda: F.silu(gate)),
        "silu backward into a strided half": (lambda: silu_backward_into(grad, gate, torch.empty_like(h).chunk(2, dim=-1)[0]),
                                              lambda: torch.ops.aten.silu_backward(grad, gate)),
    }
    threads = torch.get_num_threads()
    try:
        for name, (ours, pytorchs) in cases.items():
            torch.set_num_threads(1)
            one = pytorchs().clone()
            for count in (1, 2, 3, 5, 8, 16):
                torch.set_num_threads(count)
                assert torch.equal(ours(), one), (name, count)
    finally:
        torch.set_num_threads(threads)



def test_a_long_context_tables_rope_as_far_as_it_is_read():
    """--context-length 8M with --seq-len 64 built 1 GB of RoPE tables before the first step (67M: 4 GB,
    then an "unexpected" allocation error); the tables now grow as far as a forward reads, and a
    position's value, so every logit, is the same whatever the table's length."""
    from llmkit.model.gpt import GPT, ROPE_TABLE_POSITIONS, ModelConfig, rope_tables

    shape = dict(vocab_size=64, n_layer=1, n_head=2, n_embd=16, pos="rope")
    long, short = GPT(ModelConfig(context_length=1 << 23, **shape)), GPT(ModelConfig(context_length=32, **shape))
    assert long.rope_cos.shape[0] == ROPE_TABLE_POSITIONS and short.rope_cos.shape[0] == 32
    short.load_state_dict(long.state_dict())
    idx = torch.randint(0, 64, (2, 32), generator=torch.Generator().manual_seed(0))
    with torch.no_grad():
        assert torch.equal(long(idx)[0], short(idx)[0])
    cos, sin = long._rope_for(ROPE_TABLE_POSITIONS + 5)  # read further: doubled, and kept (within the context)
    assert long.rope_cos.shape[0] == 2 * ROPE_TABLE_POSITIONS and long.rope_cos is cos
    whole = rope_tables(long.config.head_dim, 2 * ROPE_TABLE_POSITIONS, long.config.rope_theta)
    assert torch.equal(cos, whole[0]) and torch.equal(sin, whole[1])
    # decoding one position further a token builds nothing more (each token rebuilt the whole table: 31 ms a token)
    assert all(long._rope_for(ROPE_TABLE_POSITIONS + 5 + step)[0] is cos for step in range(1, 100))
    short.cover_positions(1000)  # past the context: tables for the call only, the model's own unchanged
    assert short.rope_cos.shape[0] == 32 and short._rope_for(40)[0].shape[0] == 40 and short.rope_cos.shape[0] == 32


def test_a_document_mask_makes_each_document_attend_as_if_alone():
    """--document-mask: in a packed window, a document after another gives the logits it gives alone (rotary
    positions are relative, so its offset changes nothing but rounding); without the mask it sees the first."""
    from llmkit.train.objectives import document_ids

    torch.manual_seed(0)
    model = GPT(ModelConfig(vocab_size=50, context_length=32, n_layer=2, n_head=4, n_embd=32, dropout=0.0)).eval()
    eos = 7
    first, second = [3, 9, 11, 4, eos], [12, 5, 30, 21, 8, eos, 40]
    window = torch.tensor([first + second])
    documents = document_ids(window, eos)
    assert documents.tolist() == [[0] * 5 + [1] * 6 + [2]]  # (each end token is its document's last)
    with torch.no_grad():
        masked, _ = model(window, documents=documents)
        plain, _ = model(window)
        alone, _ = model(torch.tensor([second]))
        head, _ = model(torch.tensor([first]))
    assert torch.allclose(masked[0, 5:11], alone[0, :6], atol=1e-5)  # the second document, as if it began the window
    assert not torch.allclose(plain[0, 5:11], alone[0, :6], atol=1e-3)  # (unmasked, it reads the first)
    assert torch.equal(masked[0, :5], head[0]) or torch.allclose(masked[0, :5], head[0], atol=1e-6)
    # the loss of the masked window: the mean of its tokens' losses as the documents alone give them
    targets = torch.tensor([first[1:] + second + [1]])
    _, loss = model(window, targets, documents=documents)
    _, plain_loss = model(window, targets)
    assert not torch.isclose(loss, plain_loss)
    with pytest.raises(ValueError, match="training windows"):
        model(window, cache=model.new_cache(1, 32), documents=documents)
