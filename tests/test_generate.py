"""`llmkit generate` and its engine: KV cache = full recomputation, left padding = single rows,
seeds, sampling filters, stop strings, context overflow, LSTM, the CLI and its bad inputs."""

from __future__ import annotations

import copy
import functools

import json
import os
import shutil
import stat
from pathlib import Path

import numpy as np
import pytest
import torch

from llmkit import artifacts
from llmkit.inference.engine import GenerationParams, Generator, generate_ids
from llmkit.inference.sampling import SamplingParams, filter_top_k, filter_top_p, next_tokens
from llmkit.model.gpt import GPT, ModelConfig
from llmkit.model.lstm import LSTMLM

torch.set_num_threads(1)

SPECIALS = ["<|bos|>", "<|eos|>", "<|pad|>", "<|mask|>", "<|system|>", "<|user|>", "<|assistant|>"]
GPT2_SHAPE = dict(norm="layernorm", pos="learned", activation="gelu", bias=True, tie_embeddings=True)


def train_tokenizer(directory: Path, text: str, vocab_size: int = 400, specials: list[str] = SPECIALS) -> Path:
    """A small byte-level BPE in llmkit's format (tokenizer.json + token_bytes.npy)."""
    from tokenizers import trainers

    from llmkit.data.tokenizer import compute_token_bytes, new_byte_level_bpe
    from tokenizers import pre_tokenizers

    tok = new_byte_level_bpe()
    trainer = trainers.BpeTrainer(
        vocab_size=vocab_size, special_tokens=specials, initial_alphabet=pre_tokenizers.ByteLevel.alphabet(), show_progress=False
    )
    tok.train_from_iterator([text], trainer=trainer)
    directory.mkdir(parents=True, exist_ok=True)
    tok.save(str(directory / "tokenizer.json"))
    np.save(directory / "token_bytes.npy", compute_token_bytes(tok))
    return directory


def make_checkpoint(out: Path, text: str, seed: int = 0, task: dict | None = None, specials: list[str] = SPECIALS,
                    document_start: str | None = None, **config) -> Path:
    """A random-weight checkpoint artifact with a tokenizer trained on `text`; `document_start`
    ("eos": as if pretrained on default shards) is recorded in its config as pretrain records it."""
    from llmkit.data.tokenizer import load_tokenizer
    from llmkit.model.io import save_weights

    tok_dir = train_tokenizer(out.parent / f"{out.name}-tok", text, specials=specials)
    vocab = load_tokenizer(tok_dir).vocab_size
    settings = dict(vocab_size=vocab, context_length=64, n_layer=2, n_head=2, n_embd=32)
    settings.update(config)
    cfg = ModelConfig(**settings)
    torch.manual_seed(seed)
    model = (LSTMLM if cfg.arch == "lstm" else GPT)(cfg)
    with artifacts.create(out, "checkpoint") as build:
        save_weights(model, build.dir)
        (build.dir / "tokenizer").mkdir()
        for name in ("tokenizer.json", "token_bytes.npy"):
            (build.dir / "tokenizer" / name).write_bytes((tok_dir / name).read_bytes())
        if task is not None:
            (build.dir / "task.json").write_text(json.dumps(task))
        build.config = {"test": True, **({"document_start": document_start} if document_start else {})}
        build.seed = seed
    return out


def save_classifier_checkpoint(classifier, base: Path, out: Path, labels=("negative", "positive")) -> Path:
    """`classifier` (on `base`'s language model) as a classification checkpoint with `base`'s tokenizer."""
    from llmkit.model.io import save_weights

    with artifacts.create(out, "checkpoint") as build:
        save_weights(classifier, build.dir)
        (build.dir / "tokenizer").mkdir()
        for name in ("tokenizer.json", "token_bytes.npy"):
            (build.dir / "tokenizer" / name).write_bytes((base / "tokenizer" / name).read_bytes())
        (build.dir / "task.json").write_text(json.dumps({"task": "classify", "labels": list(labels)}))
    return out


@pytest.fixture(scope="module")
def shakespeare(shared_data) -> str:
    return (shared_data / "tinyshakespeare.txt").read_text(encoding="utf-8")[:60_000]


@pytest.fixture(scope="module")
def ckpt(tmp_path_factory, shakespeare) -> Path:
    return make_checkpoint(tmp_path_factory.mktemp("gen") / "gpt", shakespeare)


def _models():
    yield "llama-style", GPT(ModelConfig(vocab_size=97, context_length=48, n_layer=2, n_head=4, n_kv_head=2, n_embd=32))
    yield "gpt2-style", GPT(ModelConfig(vocab_size=97, context_length=48, n_layer=2, n_head=2, n_embd=32, **GPT2_SHAPE))
    yield "lstm", LSTMLM(ModelConfig(arch="lstm", vocab_size=97, context_length=48, n_layer=2, n_embd=32))


MODELS = list(_models())
PROMPTS = [[5, 6, 7, 8, 9, 10, 11], [12, 13], [3]]


def _full_recompute_greedy(model, prompt, n):
    seq = list(prompt)
    with torch.no_grad():
        for _ in range(n):
            logits, _ = model(torch.tensor([seq]))
            seq.append(int(logits[0, -1].argmax()))
    return seq[len(prompt) :]


@pytest.mark.parametrize("name, model", MODELS, ids=[m[0] for m in MODELS])
def test_kv_cache_greedy_equals_full_recomputation(name, model):
    model.eval()
    params = GenerationParams(max_new_tokens=25, stop_at_eos=False)
    batched = generate_ids(model, PROMPTS, params, pad_id=0)
    for prompt, row in zip(PROMPTS, batched):
        assert row.token_ids == _full_recompute_greedy(model, prompt, 25)  # cache == no cache
        assert generate_ids(model, [prompt], params, pad_id=0)[0].token_ids == row.token_ids  # padded == alone


@pytest.mark.parametrize("name, model", MODELS, ids=[m[0] for m in MODELS])
def test_sampling_deterministic_per_seed_and_batch_independent(name, model):
    model.eval()
    params = GenerationParams(max_new_tokens=20, temperature=1.0, top_k=40, top_p=0.95, repetition_penalty=1.2, seed=7, stop_at_eos=False)
    seeds = [11, 22, 33]
    a = [r.token_ids for r in generate_ids(model, PROMPTS, params, pad_id=0, seeds=seeds)]
    b = [r.token_ids for r in generate_ids(model, PROMPTS, params, pad_id=0, seeds=seeds)]
    alone = [generate_ids(model, [p], params, pad_id=0, seeds=[s])[0].token_ids for p, s in zip(PROMPTS, seeds)]
    assert a == b == alone
    other = [r.token_ids for r in generate_ids(model, PROMPTS, params, pad_id=0, seeds=[1, 2, 3])]
    assert other != a


@pytest.mark.parametrize("name, model", MODELS[:2], ids=[m[0] for m in MODELS[:2]])
def test_static_decode_step_equals_cached_forward(name, model):
    """GPT.decode_step (whole cache attended through a mask, the slot a tensor: the form --compile
    compiles) gives the logits of the model's own cached forward, left padding included."""
    model.eval()
    rows = [[5, 6, 7, 8, 9], [12, 13], [3, 4, 5]]
    width = max(map(len, rows))
    idx = torch.tensor([[0] * (width - len(r)) + r for r in rows])
    pads = torch.tensor([width - len(r) for r in rows])
    ours, theirs = model.new_cache(3, 32, pad_lengths=pads), model.new_cache(3, 32, pad_lengths=pads)
    with torch.no_grad():
        model(idx, cache=ours)
        model(idx, cache=theirs)
        for token in (21, 22, 23, 24):
            tokens = torch.full((3, 1), token)
            expected = model(tokens, cache=theirs)[0][:, -1]
            got = model.decode_step(tokens, torch.tensor([ours.pos]), ours.pad_lengths, ours.k, ours.v)
            ours.pos += 1
            torch.testing.assert_close(got, expected, rtol=1e-5, atol=1e-5)
    for a, b in zip(ours.k + ours.v, theirs.k + theirs.v):
        torch.testing.assert_close(a, b)


def test_compiled_generation_equals_eager():
    """--compile: the same greedy tokens and seeded samples as the eager engine, for a left-padded
    batch that runs past the context (so the cache slides and the compiled step continues)."""
    from llmkit.inference.compiled import CompiledDecoder

    model = GPT(ModelConfig(vocab_size=97, context_length=48, n_layer=2, n_head=4, n_kv_head=2, n_embd=32)).eval()
    decoder = CompiledDecoder(model)
    for params in (GenerationParams(max_new_tokens=70, stop_at_eos=False),
                   GenerationParams(max_new_tokens=20, temperature=1.0, top_k=20, seed=3, stop_at_eos=False)):
        eager = [r.token_ids for r in generate_ids(model, PROMPTS, params, pad_id=0)]
        compiled = [r.token_ids for r in generate_ids(model, PROMPTS, params, pad_id=0, decoder=decoder)]
        assert compiled == eager


def test_the_cuda_graph_settings_keep_the_tokens(monkeypatch):
    """What a GPU's compiled step adds for CUDA graphs (inductor's reduce-overhead mode, cache buffers
    marked as static addresses, no freezing, each step's logits copied out of the graph's buffer),
    taken on a CPU, where inductor makes no graphs: each new cache (the same shape, then longer) is
    the one the step reads and writes (under freezing the first cache's buffers were baked into
    the graph: later ones were neither read nor written, and nothing raised), and generation gives
    the eager tokens. Whether the graphs replay and how fast: benchmarks/gpu_check.sh."""
    from llmkit.inference import compiled

    monkeypatch.setattr(compiled, "replays_cuda_graphs", lambda device: True)
    torch.manual_seed(1)
    model = GPT(ModelConfig(vocab_size=97, context_length=48, n_layer=2, n_head=4, n_kv_head=2, n_embd=32)).eval()
    decoder = compiled.CompiledDecoder(model)
    assert decoder.cuda_graphs
    tokens = torch.tensor([4, 5, 6])
    for length, pos in ((128, 10), (128, 10), (256, 20)):
        cache = model.new_cache(3, length, pad_lengths=torch.zeros(3, dtype=torch.long))
        for buffer in (*cache.k, *cache.v):
            buffer.normal_()  # a random model's next token barely depends on the cache: random contents do
        cache.pos = pos
        reference = copy.deepcopy(cache)
        with torch.inference_mode():  # as generation runs
            expected = model.decode_step(tokens[:, None], torch.tensor([pos]), reference.pad_lengths, reference.k, reference.v)
            torch.testing.assert_close(decoder.step(tokens, cache), expected)
        torch.testing.assert_close(cache.k[0], reference.k[0])  # the new key written into this cache
    # the decoder does not keep the last cache alive (on a GPU, GBs beside the next batch's)
    import gc
    import weakref

    last = weakref.ref(cache)
    del cache, reference
    gc.collect()
    assert last() is None
    params = GenerationParams(max_new_tokens=12, stop_at_eos=False)
    for prompts in (PROMPTS, PROMPTS[::-1]):
        eager = [r.token_ids for r in generate_ids(model, prompts, params, pad_id=0)]
        assert [r.token_ids for r in generate_ids(model, prompts, params, pad_id=0, decoder=decoder)] == eager
    assert decoder._step is not None  # compiled to the end, not fallen back to the eager step


def test_the_compiled_step_folds_the_weights_in():
    """--compile freezes the weights into its graph (what lets inductor prepack them for the CPU
    matrix products; torch.compile's `options` alone did not turn it on): a weight changed after the
    first step leaves the compiled step's logits as they were, while the eager step sees it."""
    from llmkit.inference.compiled import CompiledDecoder

    torch.manual_seed(0)
    model = GPT(ModelConfig(vocab_size=97, context_length=48, n_layer=2, n_head=4, n_kv_head=2, n_embd=32)).eval()
    decoder = CompiledDecoder(model)
    tokens = torch.tensor([5, 6, 7])

    def step(run):
        with torch.inference_mode():
            cache = model.new_cache(3, decoder.cache_length(8, None), pad_lengths=torch.zeros(3, dtype=torch.long))
            return run(tokens, cache)

    def eager(tokens, cache):
        return model.decode_step(tokens[:, None], torch.zeros(1, dtype=torch.long), cache.pad_lengths, cache.k, cache.v)

    before = step(decoder.step)
    assert torch.allclose(before, step(eager), atol=1e-5)
    with torch.no_grad():
        model.blocks[0].mlp.down_proj.weight.mul_(3.0)
    assert torch.equal(step(decoder.step), before)
    assert not torch.allclose(step(eager), before, atol=1e-3)


def test_one_compiled_graph_per_batch_size():
    """The cache length is dynamic in the compiled step: prompts and outputs of any length share one
    graph per batch size (each graph holds its own packed copy of the weights, so a long chat must
    not add one per multiple of 128), and the tokens stay the eager ones."""
    from torch._dynamo.utils import counters

    from llmkit.inference.compiled import CompiledDecoder

    torch.manual_seed(0)
    model = GPT(ModelConfig(vocab_size=97, context_length=512, n_layer=2, n_head=4, n_kv_head=2, n_embd=32)).eval()
    decoder = CompiledDecoder(model)
    counters.clear()
    for rows, new_tokens in (([[5, 6, 7]], 20), ([[5, 6, 7]], 150), ([[8, 9]], 280), (PROMPTS[:2], 20), (PROMPTS[:2], 140)):
        params = GenerationParams(max_new_tokens=new_tokens, stop_at_eos=False)
        eager = [r.token_ids for r in generate_ids(model, rows, params, pad_id=0)]
        assert [r.token_ids for r in generate_ids(model, rows, params, pad_id=0, decoder=decoder)] == eager
    assert counters["stats"]["unique_graphs"] == 2  # batch 1 and batch 2, over cache lengths 128 to 384


def test_decoding_layout_keeps_the_values_and_the_tied_head():
    """Generation lays linear weights out column-major (the CPU BLAS's faster kernel for a few rows):
    same shapes and values, the same greedy tokens, and a head tied to the embedding left as it is."""
    from llmkit.inference.engine import prepare_for_decoding

    torch.manual_seed(0)
    model = GPT(ModelConfig(vocab_size=97, context_length=48, n_layer=2, n_head=4, n_kv_head=2, n_embd=32)).eval()
    params = GenerationParams(max_new_tokens=30, stop_at_eos=False)
    before = [r.token_ids for r in generate_ids(model, PROMPTS, params, pad_id=0)]
    state = {name: value.clone() for name, value in model.state_dict().items()}
    prepare_for_decoding(model)
    for name, value in model.state_dict().items():
        assert torch.equal(value, state[name]), name
    linears = [m for m in model.modules() if isinstance(m, torch.nn.Linear) and m is not model.lm_head]
    assert linears and all(m.weight.stride() == (1, m.weight.shape[0]) for m in linears)
    assert model.lm_head.weight is model.tok_emb.weight and model.tok_emb.weight.is_contiguous()
    assert [r.token_ids for r in generate_ids(model, PROMPTS, params, pad_id=0)] == before


@pytest.mark.parametrize("preset", ["tiny", "gpt2-tiny", "mini"])  # (mini: its MLP takes the two-halves product)
def test_one_sequence_decodes_to_the_same_bits_on_any_thread_count(preset):
    """A batch-1 decode step's one-row products keep their bits whatever the thread count (on an
    Intel CPU MKL's one-row kernel splits its sums by thread: a `tiny` step's logits differed by
    up to 5e-7 between 1 and 2 threads until 2026-12-06), and so does a long prompt's prefill (GPT-2's
    GELU gave a 200-token prompt other logits on 3 threads), so a completion does not change with the
    machine's cores; the thread count is left as it was."""
    from llmkit.inference.engine import prepare_for_decoding
    from llmkit.model.presets import resolve_model_config

    torch.manual_seed(0)
    model = GPT(resolve_model_config(preset, vocab_size=512)).eval()
    prepare_for_decoding(model)
    prompt = torch.randint(0, 512, (1, 200))
    threads = torch.get_num_threads()
    steps = {}
    try:
        for count in (1, 2, 3):
            torch.set_num_threads(count)
            with torch.no_grad():
                cache = model.new_cache(1, 208)
                steps[count] = [model(prompt, cache=cache, last_only=True)[0]]
                steps[count] += [model(torch.tensor([[token]]), cache=cache, last_only=True)[0] for token in (5, 77, 300)]
            assert torch.get_num_threads() == count
    finally:
        torch.set_num_threads(threads)
    assert all(torch.equal(a, b) for count in (2, 3) for a, b in zip(steps[1], steps[count]))


@pytest.mark.parametrize("preset", ["tiny", "gpt2-tiny", "mini"])
def test_a_left_padded_batch_decodes_to_the_same_bits_on_any_thread_count(preset):
    """Batched prompts of other lengths (generate --prompts, eval's generated metrics) decode through a
    mask over the padding: PyTorch's masked attention kernel gave the steps other bits on 2 to 6
    threads (up to 8e-7 at `mini`) until 2026-12-06."""
    from llmkit.inference.engine import prepare_for_decoding
    from llmkit.model.presets import resolve_model_config

    torch.manual_seed(0)
    model = GPT(resolve_model_config(preset, vocab_size=512)).eval()
    prepare_for_decoding(model)
    lengths, longest = [7, 50, 131, 200], 200
    prompts = torch.randint(1, 512, (len(lengths), longest))
    threads = torch.get_num_threads()
    steps = {}
    try:
        for count in (1, 3, 4):
            torch.set_num_threads(count)
            with torch.no_grad():
                cache = model.new_cache(len(lengths), longest + 4, pad_lengths=[longest - n for n in lengths])
                steps[count] = [model(prompts, cache=cache, last_only=True)[0]]
                steps[count] += [model(torch.full((len(lengths), 1), token), cache=cache, last_only=True)[0] for token in (5, 77, 300)]
    finally:
        torch.set_num_threads(threads)
    assert all(torch.equal(a, b) for count in (3, 4) for a, b in zip(steps[1], steps[count]))


def test_a_compiler_failure_falls_back_to_the_eager_step(capsys):
    """Past the recompile limit, or when inductor fails, decoding goes on eagerly with the same tokens."""
    from llmkit.inference.compiled import CompiledDecoder

    model = GPT(ModelConfig(vocab_size=97, context_length=48, n_layer=2, n_head=4, n_kv_head=2, n_embd=32)).eval()
    decoder = CompiledDecoder(model)

    def broken(*args):
        raise RuntimeError("the backend failed")

    decoder._step = broken
    params = GenerationParams(max_new_tokens=30, stop_at_eos=False)
    eager = [r.token_ids for r in generate_ids(model, PROMPTS, params, pad_id=0)]
    assert [r.token_ids for r in generate_ids(model, PROMPTS, params, pad_id=0, decoder=decoder)] == eager
    assert decoder._step is None and capsys.readouterr().err.count("--compile stopped (RuntimeError)") == 1


def test_sampling_filters_match_definitions():
    logits = torch.tensor([[2.0, 1.0, 0.5, 0.0, -1.0]])
    assert torch.isinf(filter_top_k(logits, 2)).tolist() == [[False, False, True, True, True]]
    probs = logits.softmax(-1)[0]  # 0.574, 0.211, 0.128, 0.078, 0.029
    kept = ~torch.isinf(filter_top_p(logits, 0.7))[0]
    assert kept.tolist() == [True, True, False, False, False] and probs[0] < 0.7 <= probs[:2].sum()
    # repetition penalty: a seen token with the top logit loses it
    seen = torch.tensor([[True, False, False, False, False]])
    greedy = next_tokens(logits, SamplingParams(repetition_penalty=3.0), None, seen)
    assert greedy.item() == 1
    # the empirical distribution of temperature sampling follows softmax(logits / T)
    gens = [torch.Generator().manual_seed(0)]
    draws = [next_tokens(logits, SamplingParams(temperature=2.0), gens).item() for _ in range(4000)]
    freq = np.bincount(draws, minlength=5) / 4000
    assert np.allclose(freq, (logits / 2.0).softmax(-1)[0].numpy(), atol=0.03)
    # a tiny temperature is (nearly) greedy, not a NaN distribution
    scores = torch.randn(4, 97, generator=torch.Generator().manual_seed(0)) * 10
    gens = [torch.Generator().manual_seed(i) for i in range(4)]
    assert torch.equal(next_tokens(scores, SamplingParams(temperature=1e-40), gens), scores.argmax(-1))
    for below_float32 in (1e-46, 1e-300):  # 0 to the fp32 scores: 0/0 was NaN and multinomial raised
        assert torch.equal(next_tokens(scores, SamplingParams(temperature=below_float32), gens), scores.argmax(-1))
    # a penalty near 0 makes a seen token's positive score inf: sampling shifted it by itself (NaN) and failed;
    # the scores stay in the float range, and the seen tokens (the largest there) are what is drawn
    seen = torch.tensor([[True, True, False, False, False]])
    for temperature in (0.0, 1.0):
        gens = [torch.Generator().manual_seed(1)]
        picks = {next_tokens(logits, SamplingParams(temperature=temperature, repetition_penalty=1e-39), gens, seen).item()
                 for _ in range(50)}
        assert picks <= {0, 1}, picks


def test_sampling_draws_on_the_cpu_and_gives_the_tokens_back_on_the_scores_device():
    """The rows' generators are CPU ones, which a CUDA multinomial refuses ("Expected a 'cuda' device
    type for generator"): the draw copies the probabilities to the CPU and returns the tokens on
    their device (a stand-in for GPU probabilities, on "meta", is all a CPU machine can show). On
    the CPU the tokens a seed gives are those it gave before (pinned)."""
    from llmkit.inference.sampling import draw

    g = torch.Generator().manual_seed(0)
    logits = torch.randn(3, 50, generator=g) * 2
    seen = torch.zeros(3, 50, dtype=torch.bool)
    seen[:, :10] = True
    params = SamplingParams(temperature=0.9, top_k=20, top_p=0.9, repetition_penalty=1.3)
    generators = [torch.Generator().manual_seed(s) for s in (1, 2, 3)]
    assert [next_tokens(logits, params, generators, seen).tolist() for _ in range(4)] == [
        [45, 19, 22], [30, 9, 16], [45, 19, 22], [19, 12, 38]]

    class ProbabilitiesOnAnotherDevice:
        device = torch.device("meta")

        def __init__(self, probs):
            self.probs, self.copied_to = probs, []

        def to(self, device, dtype=None):
            self.copied_to.append(torch.device(device).type)
            return self.probs.to(device, dtype)

    probs = ProbabilitiesOnAnotherDevice(logits.softmax(-1))
    tokens = draw(probs, [torch.Generator().manual_seed(s) for s in (1, 2, 3)])
    assert probs.copied_to == ["cpu"] and tokens.device.type == "meta" and tokens.shape == (3,)


def test_context_overflow_slide_and_error():
    model = GPT(ModelConfig(vocab_size=97, context_length=16, n_layer=1, n_head=2, n_embd=16, **GPT2_SHAPE)).eval()
    long_prompt = list(range(3, 30))  # 27 tokens > context 16
    rows = generate_ids(model, [long_prompt, [4, 5]], GenerationParams(max_new_tokens=40, stop_at_eos=False), pad_id=0)
    assert [len(r.token_ids) for r in rows] == [40, 40]
    # until the first slide, the output equals generation from the prompt's newest tokens
    keep = max(16 - 40, 16 // 2)
    window_first = _full_recompute_greedy(model, long_prompt[-keep:], 16 - keep)
    assert rows[0].token_ids[: 16 - keep] == window_first
    from llmkit.errors import UserError

    with pytest.raises(UserError, match="exceed the model's context length"):
        generate_ids(model, [long_prompt], GenerationParams(max_new_tokens=4, context_overflow="error"), pad_id=0)


def test_each_row_slides_as_it_would_alone():
    """A row's window is its own: batched with prompts that slide (at other times), a short prompt
    that never slides, and each long one, give what they give alone (greedy, and seeded samples
    with rows finishing early)."""
    torch.manual_seed(1)
    model = GPT(ModelConfig(vocab_size=97, context_length=32, n_layer=2, n_head=4, n_embd=32)).eval()
    with torch.no_grad():
        for weight in model.parameters():
            weight.mul_(8)  # decisive scores: float rounding of a re-encode cannot flip a choice
    prompts = [[1, 5, 9], list(range(3, 43)), list(range(50, 70)), [7] * 12]
    for params, eos in ((GenerationParams(max_new_tokens=40, stop_at_eos=False), ()),
                        (GenerationParams(max_new_tokens=40, temperature=1.0, seed=4), (11, 12, 13))):
        batched = [r.token_ids for r in generate_ids(model, prompts, params, pad_id=0, eos_ids=eos, seeds=[1, 2, 3, 4])]
        alone = [generate_ids(model, [p], params, pad_id=0, eos_ids=eos, seeds=[s])[0].token_ids
                 for p, s in zip(prompts, [1, 2, 3, 4])]
        assert batched == alone


def _encoded_tokens(model, prompts, params, **kwargs):
    """The completions, and how many tokens the re-encodes after the first prefill fed (calls of more than one token)."""
    calls = []
    hook = model.register_forward_pre_hook(lambda module, args: calls.append(tuple(args[0].shape)))
    try:
        rows = [r.token_ids for r in generate_ids(model, prompts, params, pad_id=0, **kwargs)]
    finally:
        hook.remove()
    return rows, sum(b * t for b, t in calls[1:] if t > 1)


def test_a_batch_re_encodes_only_the_rows_whose_window_slides():
    """Rows whose windows fill at different steps: the batch re-encodes what its rows alone would,
    no more (it re-encoded the whole batch at each row's slide, and the rows that had not slid,
    re-fed whole, filled the cache again: 8 prompts made a context-long prefill nearly every step)."""
    torch.manual_seed(2)
    model = GPT(ModelConfig(vocab_size=97, context_length=32, n_layer=2, n_head=4, n_kv_head=2, n_embd=32)).eval()
    with torch.no_grad():
        for weight in model.parameters():
            weight.mul_(8)  # decisive scores: float rounding cannot flip a choice
    prompts = [list(range(3, 3 + n)) for n in (1, 3, 6, 9, 12, 15, 20, 26)]
    params = GenerationParams(max_new_tokens=90, stop_at_eos=False)
    batched, batched_cost = _encoded_tokens(model, prompts, params)
    alone = [_encoded_tokens(model, [p], params) for p in prompts]
    assert batched == [rows[0] for rows, _ in alone]
    assert batched_cost == sum(cost for _, cost in alone) > 0


def test_a_context_of_one_token_continues_from_the_last_token_alone():
    """The window keeps at least one token (a context of 1 kept none: an IndexError)."""
    torch.manual_seed(4)
    for shape in (GPT2_SHAPE, {}):
        model = GPT(ModelConfig(vocab_size=50, context_length=1, n_layer=1, n_head=2, n_embd=16, **shape)).eval()
        prompts = [[3, 4, 5], [7]]
        rows = generate_ids(model, prompts, GenerationParams(max_new_tokens=6, stop_at_eos=False), pad_id=0)
        for prompt, row in zip(prompts, rows):
            expected, last = [], prompt[-1]
            with torch.no_grad():
                for _ in range(6):
                    last = int(model(torch.tensor([[last]]))[0][0, -1].argmax())
                    expected.append(last)
            assert row.token_ids == expected


def test_an_ensemble_with_a_recurrent_member_slides_each_row_as_alone():
    """A Transformer's window slides; the LSTM beside it in an ensemble is re-read from the window
    start by the rows that slide and carries its state in the others, as for each row alone."""
    from llmkit.model.ensemble import Ensemble

    torch.manual_seed(3)
    gpt = GPT(ModelConfig(vocab_size=97, context_length=24, n_layer=1, n_head=2, n_embd=32)).eval()
    lstm = LSTMLM(ModelConfig(arch="lstm", vocab_size=97, context_length=24, n_layer=1, n_embd=32)).eval()
    with torch.no_grad():
        for weight in (*gpt.parameters(), *lstm.parameters()):
            weight.mul_(6)
    model = Ensemble([gpt, lstm], [0.6, 0.4])
    prompts = [[4, 5], list(range(10, 30)), [7] * 9]
    params = GenerationParams(max_new_tokens=50, stop_at_eos=False)
    batched = [r.token_ids for r in generate_ids(model, prompts, params, pad_id=0)]
    assert batched == [generate_ids(model, [p], params, pad_id=0)[0].token_ids for p in prompts]


def test_a_prompt_that_fits_but_for_the_last_token_runs_whole(cli, ckpt, tmp_path):
    """The last new token is never fed: prompt + max_new_tokens - 1 positions are needed. Such a
    prompt is neither cut (its first token stays) nor refused, and no window note is printed."""
    model = GPT(ModelConfig(vocab_size=97, context_length=16, n_layer=1, n_head=2, n_embd=16, **GPT2_SHAPE)).eval()
    prompt = list(range(3, 14))  # 11 + 6 - 1 = 16
    for overflow in ("slide", "error"):
        params = GenerationParams(max_new_tokens=6, stop_at_eos=False, context_overflow=overflow)
        assert generate_ids(model, [prompt], params, pad_id=0)[0].token_ids == _full_recompute_greedy(model, prompt, 6)
    from llmkit.errors import UserError

    with pytest.raises(UserError, match="exceed the model's context length"):
        generate_ids(model, [[2] + prompt], GenerationParams(max_new_tokens=6, context_overflow="error"), pad_id=0)
    # "x" is 2 tokens after the start token: 2 + 63 - 1 = 64, the context
    for overflow in ("slide", "error"):
        result = cli("generate", ckpt, "-p", "x", "-n", "63", "--greedy", "--context-overflow", overflow, "-o", tmp_path / f"{overflow}.jsonl")
        assert result.exit_code == 0 and "sliding window" not in result.output, result.output
    assert json.loads((tmp_path / "slide.jsonl").read_text())["prompt_tokens"] == 2


@pytest.mark.parametrize("greedy", [True, False])
def test_a_diverged_model_is_named_not_sampled(cli, ckpt, greedy, tmp_path):
    """NaN weights (a run that diverged): sampling used to fail inside torch.multinomial, greedy
    decoding to print noise; both are refused at the first scores, and generate names the weight
    (and, of several checkpoints, the one) that holds NaN, as eval does."""
    from safetensors.torch import load_file, save_file

    from conftest import resign
    from llmkit.errors import NotFinite
    from llmkit.model.io import load_checkpoint

    loaded = load_checkpoint(ckpt)
    with torch.no_grad():
        loaded.model.final_norm.weight.fill_(float("nan"))
    with pytest.raises(NotFinite, match="the model's scores are not finite"):
        Generator(loaded.model, loaded.tokenizer).complete(["ROMEO:"], GenerationParams(max_new_tokens=4, temperature=0.0 if greedy else 1.0))
    damaged = tmp_path / "damaged"
    shutil.copytree(ckpt, damaged)
    weights = load_file(str(damaged / "model.safetensors"))
    weights["final_norm.weight"][:] = float("nan")
    save_file(weights, str(damaged / "model.safetensors"), metadata={"format": "pt"})
    resign(damaged)
    sampling = ["--greedy"] if greedy else ["--temperature", "1"]
    for given, whose in (([damaged], "its weight"), ([ckpt, damaged, "--weights", "0,1"], f"{damaged}'s weight")):
        output = cli("generate", *given, "-p", "ROMEO:", "-n", "4", *sampling).output
        assert output.startswith("ROMEO:\nerror: "), output  # (the prompt's line ended: it read `ROMEO:error: ...`)
        said = " ".join(output.split())
        assert said.removeprefix("ROMEO: ") == f"error: the model's outputs are not finite (NaN or infinity): {whose} final_norm.weight holds NaN or inf; " \
                       "use another checkpoint", said


def test_ignore_eos_keeps_a_chats_role_tokens_as_stops(ckpt):
    """--ignore-eos goes past the end-of-text token only: a role token still ends a chat's reply
    (it was dropped as a stop too, and the model went on to write the user's next turn)."""
    from llmkit.model.io import load_checkpoint

    loaded = load_checkpoint(ckpt)
    generator = Generator(loaded.model, loaded.tokenizer)
    free = generator.complete(["ROMEO:"], GenerationParams(max_new_tokens=6, stop_at_eos=False))[0]
    role = free.token_ids[2]  # stands for a role token the model writes
    params = GenerationParams(max_new_tokens=6, stop_at_eos=False)
    stopped = generator.complete(["ROMEO:"], params, extra_stop_ids=[role])[0]
    assert stopped.token_ids == free.token_ids[:free.token_ids.index(role)] and stopped.finish_reason == "eos"
    [row] = generate_ids(loaded.model, [[loaded.tokenizer.bos_id] + loaded.tokenizer.encode("ROMEO:")], params, pad_id=0,
                         eos_ids=[role])
    assert row.token_ids == free.token_ids  # the end-of-text token(s) alone are gone past


def test_generator_text_stop_strings_and_streaming(ckpt):
    from llmkit.model.io import load_checkpoint

    loaded = load_checkpoint(ckpt)
    generator = Generator(loaded.model, loaded.tokenizer)
    # (a random model samples special tokens, which end a text: this test is about stop strings)
    complete = functools.partial(generator.complete, extra_stop_ids=())
    params = GenerationParams(max_new_tokens=40, temperature=1.0, seed=3, stop_at_eos=False)
    free = complete(["ROMEO:"], params)[0]
    assert free.finish_reason == "length" and len(free.token_ids) == 40
    # stop at a string that the free run produced: the text is cut just before it
    target = free.text[5:7]
    streamed: list[str] = []
    cut = complete(["ROMEO:"], GenerationParams(**{**params.__dict__, "stop": [target]}), on_text=lambda r, p: streamed.append(p))[0]
    assert cut.finish_reason == "stop"
    assert cut.text == free.text[: free.text.index(target)]
    assert "".join(streamed) == cut.text
    quiet = complete(["ROMEO:"], GenerationParams(**{**params.__dict__, "stop": [target]}))[0]  # no streaming
    assert (quiet.text, quiet.token_ids, quiet.finish_reason) == (cut.text, cut.token_ids, "stop")
    late = free.text[-3:]  # a stop string that only completes at the very end
    ends = complete(["ROMEO:"], GenerationParams(**{**params.__dict__, "stop": [late]}))[0]
    assert ends.text == free.text[: free.text.index(late)]
    assert loaded.tokenizer.decode(cut.token_ids).startswith(cut.text)
    # streaming without stop strings reassembles the full text
    pieces: list[str] = []
    again = complete(["ROMEO:"], params, on_text=lambda r, p: pieces.append(p))[0]
    assert "".join(pieces) == again.text == free.text


def test_streaming_holds_back_a_stop_string_before_a_half_character(ckpt):
    """The stop string's first character followed by a token that ends inside a character: it is
    held back (the margin is not spent on the half character), so what is streamed is the final text."""
    from llmkit.data.tokenizer import load_tokenizer
    from llmkit.inference.engine import _TextTracker

    tok = load_tokenizer(ckpt / "tokenizer")
    ids = tok.encode("情如尼")
    assert len(ids) == 9  # one token per byte: every character arrives in pieces
    tracker, streamed = _TextTracker(tok.decode, ["如尼"], streaming=True), ""
    for token in ids:
        stop = tracker.add(token)
        streamed += tracker.pop_stream()
        if stop:
            break
    streamed += tracker.pop_stream(finished=True)
    assert tracker.final_text == "情" and streamed == "情"
    # the completion's tokens are all three of 情's bytes (its first two, one U+FFFD, passed for it by length: the
    # tokens of "本" before a stop string were counted as 1 of its 2, and decoded to U+FFFD)
    from llmkit.inference.engine import tokens_of_text

    assert tokens_of_text(tok.decode, ids, "情") == ids[:3] and tok.decode(ids[:3]) == "情"


def test_a_long_completions_text_is_decoded_once_not_at_every_token(ckpt):
    """Stop strings and streaming read the text at every token: decoded whole each time, a long
    completion cost a quadratic number of token decodings. The text stays what decoding all the ids
    gives (characters split across tokens included), with about 2 x SETTLE ids decoded a token."""
    from llmkit.data.tokenizer import load_tokenizer
    from llmkit.inference.engine import _TextTracker

    tok = load_tokenizer(ckpt / "tokenizer")
    ids = tok.encode("ROMEO: 情如尼，何以 — what light? 🎉 " * 60)
    decoded = []

    def counting(decode):
        return lambda part: decoded.append(len(part)) or decode(part)

    tracker = _TextTracker(counting(tok.decode), ["never there"], streaming=True, decode_after_text=counting(tok.decode_continuation))
    streamed = ""
    for n, token in enumerate(ids, 1):
        assert not tracker.add(token)
        assert tracker.text == tok.decode(ids[:n])
        streamed += tracker.pop_stream()
    assert streamed + tracker.pop_stream(finished=True) == tok.decode(ids)
    assert len(ids) > 1000 and sum(decoded) < 4 * 2 * _TextTracker.SETTLE * len(ids) < len(ids) ** 2 / 2


def test_cli_generate_jsonl_seed_and_samples(cli, ckpt, tmp_path):
    prompts = tmp_path / "prompts.jsonl"
    # a data set's reference "completion" and a "seed" of its own are kept beside ours (they were dropped unsaid)
    prompts.write_text(json.dumps({"prompt": "KING:", "id": "a", "seed": 99, "input_seed": 1, "completion": "gold"}) + "\n"
                       + json.dumps({"prompt": "To be"}) + "\n")
    args = ["generate", ckpt, "--prompts", prompts, "-p", "First Citizen:", "--num-samples", "2", "-n", "12", "--seed", "5", "--batch-size", "4"]
    first = cli(*args, "-o", tmp_path / "a.jsonl")
    second = cli(*args, "-o", tmp_path / "b.jsonl")
    assert first.exit_code == 0 and second.exit_code == 0, first.output + second.output
    a = [json.loads(l) for l in (tmp_path / "a.jsonl").read_text().splitlines()]
    b = [json.loads(l) for l in (tmp_path / "b.jsonl").read_text().splitlines()]
    assert len(a) == 6 and [r["completion"] for r in a] == [r["completion"] for r in b]
    assert [r["prompt"] for r in a] == ["First Citizen:"] * 2 + ["KING:"] * 2 + ["To be"] * 2
    assert a[2]["id"] == "a" and a[0]["completion"] != a[1]["completion"]  # samples differ
    assert (a[2]["input_completion"], a[2]["input_input_seed"], a[2]["input_seed"], a[2]["seed"]) == ("gold", 99, 1, 5), a[2]
    assert a[2]["completion"] != "gold" and "input_completion" not in a[4]
    assert all(r["completion_tokens"] <= 12 for r in a)
    # one prompt alone gives the same text as inside the batch (same seed)
    alone = cli("generate", ckpt, "-p", "KING:", "--num-samples", "2", "-n", "12", "--seed", "5", "-o", tmp_path / "c.jsonl")
    assert alone.exit_code == 0, alone.output
    c = [json.loads(l) for l in (tmp_path / "c.jsonl").read_text().splitlines()]
    # prompt index differs (0 vs 1) so the seeds differ; greedy must agree regardless
    greedy = cli("generate", ckpt, "-p", "KING:", "-p", "To be", "--greedy", "-n", "10", "-o", tmp_path / "g.jsonl")
    single = cli("generate", ckpt, "-p", "To be", "--greedy", "-n", "10", "-o", tmp_path / "h.jsonl")
    assert greedy.exit_code == 0 and single.exit_code == 0, greedy.output + single.output
    g = [json.loads(l) for l in (tmp_path / "g.jsonl").read_text().splitlines()]
    h = [json.loads(l) for l in (tmp_path / "h.jsonl").read_text().splitlines()]
    assert g[1]["completion"] == h[0]["completion"]
    assert len(c) == 2
    # the same records as CSV and Parquet: the same completions (a CSV's every line was a prompt, its header too)
    import datasets

    rows = [{"prompt": "KING:", "id": "a"}, {"prompt": "To be", "id": "b"}]
    datasets.Dataset.from_list(rows).to_parquet(str(tmp_path / "p.parquet"))
    (tmp_path / "p.csv").write_text("prompt,id\nKING:,a\nTo be,b\n")
    (tmp_path / "p.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))
    for name in ("p.jsonl", "p.csv", "p.parquet"):
        made = cli("generate", ckpt, "--prompts", tmp_path / name, "-n", "6", "--seed", "5", "-o", tmp_path / f"{name}.out.jsonl")
        assert made.exit_code == 0, made.output
    read = lambda name: [(r["prompt"], r["id"], r["completion"]) for r in map(json.loads, (tmp_path / f"{name}.out.jsonl").read_text().splitlines())]  # noqa: E731
    assert read("p.csv") == read("p.parquet") == read("p.jsonl") and len(read("p.csv")) == 2


def test_the_documented_library_call_gives_the_text_of_the_cli(cli, shakespeare, tmp_path, monkeypatch):
    """A model pretrained on default shards saw documents start after <|eos|>: Generator.for_checkpoint
    starts prompts there as llmkit generate does (docs/generate.md's example started them after
    <|bos|>, which a random-weight model hardly tells apart, so the model's input is compared too)."""
    from llmkit.inference import engine
    from llmkit.model.io import load_checkpoint

    ckpt = make_checkpoint(tmp_path / "pretrained", shakespeare[:20_000], document_start="eos")
    fed = []
    real_prefill = engine._Window.prefill
    monkeypatch.setattr(engine._Window, "prefill", lambda self, rows: fed.append(rows) or real_prefill(self, rows))
    sampling = ["-n", "16", "--temperature", "1.0", "--seed", "1", "--ignore-eos"]
    assert cli("generate", ckpt, "-p", "ROMEO:", "-p", "To be", *sampling, "-o", tmp_path / "cli.jsonl").exit_code == 0
    expected = [json.loads(line)["completion"] for line in (tmp_path / "cli.jsonl").read_text().splitlines()]
    cli_fed, fed[:] = list(fed), []
    loaded = load_checkpoint(ckpt)
    params = GenerationParams(max_new_tokens=16, temperature=1.0, seed=1, stop_at_eos=False)
    assert [c.text for c in Generator.for_checkpoint(loaded).complete(["ROMEO:", "To be"], params)] == expected
    assert fed == cli_fed and cli_fed[0][0][0] == loaded.tokenizer.eos_id


def test_cli_streams_single_prompt(cli, ckpt):
    result = cli("generate", ckpt, "-p", "ROMEO:", "-n", "8", "--greedy")
    assert result.exit_code == 0, result.output
    from llmkit.model.io import load_checkpoint

    loaded = load_checkpoint(ckpt)
    expected = Generator(loaded.model, loaded.tokenizer).complete(["ROMEO:"], GenerationParams(max_new_tokens=8))[0].text
    assert "ROMEO:" + expected in result.output
    assert "prompt 1" not in result.output  # (one completion: no rules)
    # several streamed: each under its rule (the first had none)
    several = cli("generate", ckpt, "-p", "ROMEO:", "-p", "JULIET:", "-n", "4", "--greedy", "--stream")
    assert several.exit_code == 0, several.output
    assert several.output.index("prompt 1") < several.output.index("ROMEO:") < several.output.index("prompt 2")


def test_printed_completions_piped_are_the_text_as_generated(cli, ckpt, tmp_path):
    """Several prompts print when their batch ends; piped, the text is written as it is (rich expanded
    tabs and dropped control characters), as the streamed completion and -o records are."""
    args = ["generate", ckpt, "-p", "KING:\\tto\fbe", "-p", "x \t tab", "-n", "6", "--greedy"]
    assert cli(*args, "-o", tmp_path / "a.jsonl").exit_code == 0
    printed = cli(*args)
    assert printed.exit_code == 0, printed.output
    for line in (tmp_path / "a.jsonl").read_text().splitlines():
        record = json.loads(line)
        assert "\n" + record["prompt"] + record["completion"] + "\n" in printed.output


def test_one_run_at_a_time_writes_an_output_file_through_a_temporary_file_of_its_own(cli, ckpt, tmp_path):
    """Two runs on one -o used to share the temporary `.NAME.tmp`: the second truncated the first's
    records and a failed run's landed at -o. Now a run holds the output's lock (a second is refused
    at once), writes a temporary file no other run has, and checks -o again under the lock."""
    from llmkit.errors import UserError
    from llmkit.generate.config import GenerateConfig
    from llmkit.generate.stage import JsonlOutput
    from llmkit.outputs import output_lock

    out = tmp_path / "a.jsonl"
    args = ["generate", ckpt, "-p", "KING:", "-n", "3", "--greedy", "-o", out]
    with output_lock(out):
        result = cli(*args)
    lines = [line for line in result.output.strip().splitlines() if line.strip()]
    assert result.exit_code != 0 and len(lines) == 1 and "another llmkit run is writing" in lines[0], result.output
    assert not out.exists()
    (tmp_path / ".a.jsonl.tmp").write_text("another run's records\n")
    (tmp_path / ".a.jsonl.tmp-killed").write_text("the temporary file of a run killed outright\n")
    (tmp_path / "a.jsonl.partial").write_text("what an earlier run made before it stopped\n")
    assert cli(*args).exit_code == 0
    assert not (tmp_path / ".a.jsonl.tmp-killed").exists()  # nobody else can be using it: the lock was free
    assert (tmp_path / ".a.jsonl.tmp").read_text() == "another run's records\n"
    assert json.loads(out.read_text())["prompt"] == "KING:" and not (tmp_path / "a.jsonl.partial").exists()  # superseded
    # --force replaces a file generate or chat wrote, not a user's: it replaced any file (notes included)
    assert cli(*args, "--force").exit_code == 0
    (tmp_path / "notes.txt").write_text("precious\n")
    refused = cli(*args[:-1], tmp_path / "notes.txt", "--force")
    assert refused.exit_code == 1 and "is not a file of completions generate wrote" in refused.output, refused.output
    assert (tmp_path / "notes.txt").read_text() == "precious\n"
    # nor a data set whose records begin as generate's do (an SFT set of {"prompt": ..., "response": ...}: it
    # was replaced), nor a chat transcript
    for name, record in (("sft.jsonl", {"prompt": "What is a list?", "response": "A sequence."}),
                         ("chat.jsonl", {"messages": [{"role": "user", "content": "hi"}], "llmkit": "chat"})):
        (tmp_path / name).write_text(json.dumps(record) + "\n")
        refused = cli(*args[:-1], tmp_path / name, "--force")
        assert refused.exit_code == 1 and "is not a file of completions generate wrote" in refused.output, refused.output
        assert json.loads((tmp_path / name).read_text()) == record
    assert out.read_text().startswith('{"llmkit": "generate"')  # the mark of its own, first: read from the file's start
    from llmkit.generate.stage import COMPLETIONS

    huge = tmp_path / "huge.jsonl"  # a prompt past the context is kept whole: a first record of any length is known
    huge.write_text(json.dumps({"llmkit": "generate", "prompt": "x" * (20 << 20)}) + "\n")
    assert COMPLETIONS(huge)
    huge.write_text(json.dumps({"prompt": "x", "completion": "y"}) + "\n")  # written before the mark: refused, and said so
    for force in (("--force",), ()):  # (without --force too: it was advised, then refused)
        refused = cli(*args[:-1], huge, *force)
        said = " ".join(refused.output.split())
        assert refused.exit_code == 1 and "is not a file of completions generate wrote" in said and "--force" not in said, said
    umask = os.umask(0)
    os.umask(umask)
    assert stat.S_IMODE(out.stat().st_mode) == 0o666 & ~umask
    with pytest.raises(UserError, match="already exists"):  # made since the command's own check
        with JsonlOutput(out, GenerateConfig.build(prompts=["x"])):
            pass
    assert not list(tmp_path.glob(".a.jsonl.tmp-*"))
    # stopped after some records: they are kept in .partial, said on the error's own line (generate does not resume)
    from llmkit.errors import one_line
    from llmkit.generate.stage import Generated
    from llmkit.inference.engine import Completion
    from llmkit.inference.prompts import Prompt

    with pytest.raises(KeyboardInterrupt) as stopped:
        with JsonlOutput(tmp_path / "b.jsonl", GenerateConfig.build(prompts=["x"])) as output:
            output.write([Generated(Prompt(text="x"), Completion(prompt="x", text="y", token_ids=[1], finish_reason="length"))])
            raise KeyboardInterrupt
    assert json.loads((tmp_path / "b.jsonl.partial").read_text())["completion"] == "y" and not (tmp_path / "b.jsonl").exists()
    assert one_line(stopped.value).endswith(f"the 1 completion(s) made before stopping are in {tmp_path / 'b.jsonl.partial'}; "
                                            "a rerun makes them all again")


def test_a_streamed_completion_stopped_by_ctrl_c_ends_its_line(monkeypatch, tmp_path):
    """The error line began after the cut-off text, mid-line. The control characters a terminal
    would act on are not shown."""
    import io

    from llmkit import console
    from llmkit.generate import stage
    from llmkit.generate.command import _generate
    from llmkit.generate.config import GenerateConfig
    from llmkit.inference.prompts import Prompt

    def stopped(checkpoints, config, on_text=None, on_ready=None, **kwargs):
        on_ready([Prompt(text="ROMEO:")])
        on_text(0, " What\x1bZ light\x07\x9b")  # (ESC Z asks a terminal to answer as if typed: rich passed ESC on)
        raise KeyboardInterrupt

    monkeypatch.setattr(stage, "run_generate", stopped)
    for terminal in (True, False):  # (a file both streams go to read `... lighterror: ...` too)
        screen = io.StringIO()
        monkeypatch.setattr(console, "out", console._Console(file=screen, force_terminal=terminal, width=80, highlight=False))
        with pytest.raises(KeyboardInterrupt):
            _generate(GenerateConfig.build(prompts=["ROMEO:"]), checkpoints=[tmp_path / "ckpt"], out=None, force=False)
        shown = " WhatZ light\n" if terminal else " What\x1bZ light\x07\x9b\n"  # (a file gets the text as made)
        assert screen.getvalue().endswith(shown), (terminal, repr(screen.getvalue()))


def test_lstm_checkpoint_generates(cli, tmp_path, shakespeare):
    ckpt = make_checkpoint(tmp_path / "lstm", shakespeare[:20000], arch="lstm", n_layer=1)
    result = cli("generate", ckpt, "-p", "A", "-p", "Be it so", "-n", "100", "--greedy", "-o", tmp_path / "o.jsonl")
    assert result.exit_code == 0, result.output
    rows = [json.loads(l) for l in (tmp_path / "o.jsonl").read_text().splitlines()]
    assert all(r["completion_tokens"] == 100 or r["finish_reason"] == "eos" for r in rows)  # beyond the 64-token context


@pytest.mark.parametrize(
    "args, message",
    [
        ([], "no prompt given"),
        (["--prompts", "{tmp}/exists.jsonl"], "exists.jsonl holds no prompt"),
        (["--prompts", "{tmp}/missing.txt"], "prompts file not found"),
        (["--prompts", "{tmp}"], "is a folder; pass a .txt"),
        (["-p", "x", "--top-p", "1.5"], "--top-p must be in (0, 1]"),
        (["-p", "x", "--temperature", "-1"], "temperature must be"),
        (["-p", "x", "--context-overflow", "wrap"], "--context-overflow must be one of"),
        (["-p", "x", "-o", "{tmp}/exists.jsonl"], "already exists"),
        (["-p", "x", "-n", "100", "--context-overflow", "error"], "exceed the model's context length"),
        (["-p", "x", "--greedy", "--temperature", "0.5"], "--greedy takes the most likely token, which --temperature 0.5"),
        (["-p", "x", "--greedy", "--temperature", "0.8"], "--greedy takes the most likely token, which --temperature 0.8"),
        (["-p", "x", "--stop", ""], "an empty stop string would stop at once"),
        # copies of one completion, computed each (they came out without a word)
        (["-p", "x", "--greedy", "-s", "3"], "--greedy takes the most likely token, so --num-samples 3 would give 3 copies"),
        (["-p", "x", "--temperature", "0", "-s", "2"], "--temperature 0 takes the most likely token, so --num-samples 2"),
    ],
)
def test_cli_generate_bad_inputs(cli, ckpt, tmp_path, args, message):
    (tmp_path / "exists.jsonl").write_text("")
    result = cli("generate", ckpt, *[a.format(tmp=tmp_path) for a in args])
    assert result.exit_code == 2 if not args else result.exit_code != 0  # (no prompt: a usage error, as a missing argument)
    lines = [l for l in result.output.strip().splitlines() if l.strip()]
    # the error alone: not after a streamed prompt ("xerror: ...")
    assert len(lines) == 1 and lines[0].startswith("error: ") and message in lines[0], result.output


def test_prompts_from_a_pipe(ckpt, tmp_path):
    """--prompts /dev/stdin, <(command), a named pipe: read as the text file it streams (they were
    "not found", not being regular files)."""
    import subprocess
    import sys
    import threading

    def generate_from(pipe: Path, text: str, out: Path) -> None:
        os.mkfifo(pipe)
        # (a daemon: a stage that never opened the pipe leaves the writer waiting, not the test)
        threading.Thread(target=lambda: pipe.write_text(text), daemon=True).start()
        # its own process, with a time limit: a stage that read the pipe twice waited for a writer that was gone
        result = subprocess.run([sys.executable, "-m", "llmkit", "generate", str(ckpt), "--prompts", str(pipe), "--greedy",
                                 "-n", "3", "-o", str(out)], capture_output=True, text=True, timeout=120)
        assert result.returncode == 0, result.stderr[-2000:]

    generate_from(tmp_path / "prompts", "ROMEO:\nJULIET:\n", tmp_path / "o.jsonl")
    assert [json.loads(line)["prompt"] for line in (tmp_path / "o.jsonl").read_text().splitlines()] == ["ROMEO:", "JULIET:"]
    # records through a pipe named .jsonl: read without seeking back (it was an unexpected "not seekable")
    generate_from(tmp_path / "prompts.jsonl", '{"prompt": "ROMEO:"}\n', tmp_path / "r.jsonl")
    assert json.loads((tmp_path / "r.jsonl").read_text())["prompt"] == "ROMEO:"
    # `--prompts -`: standard input's lines (it was "prompts file not found: -")
    result = subprocess.run([sys.executable, "-m", "llmkit", "generate", str(ckpt), "--prompts", "-", "--greedy", "-n", "3",
                             "-o", str(tmp_path / "s.jsonl")], input="ROMEO:\nJULIET:\n", capture_output=True, text=True, timeout=120)
    assert result.returncode == 0, result.stderr[-2000:]
    assert [json.loads(line) for line in (tmp_path / "s.jsonl").read_text().splitlines()] == \
        [json.loads(line) for line in (tmp_path / "o.jsonl").read_text().splitlines()]
    # JSONL on standard input (`jq ... | llmkit generate --prompts -`): its records, not completions of their JSON text
    result = subprocess.run([sys.executable, "-m", "llmkit", "generate", str(ckpt), "--prompts", "-", "--greedy", "-n", "3",
                             "-o", str(tmp_path / "j.jsonl")], input='{"prompt": "ROMEO:"}\n\n{"prompt": "JULIET:"}\n',
                            capture_output=True, text=True, timeout=120)
    assert result.returncode == 0 and "standard input is read as JSONL" in result.stderr, result.stderr[-2000:]
    assert [json.loads(line) for line in (tmp_path / "j.jsonl").read_text().splitlines()] == \
        [json.loads(line) for line in (tmp_path / "o.jsonl").read_text().splitlines()]
    # a record cut short among them is named (the whole input was completed as text lines)
    result = subprocess.run([sys.executable, "-m", "llmkit", "generate", str(ckpt), "--prompts", "-", "-n", "3"],
                            input='{"prompt": "ROMEO:"}\n{"prompt": "JULIET:"}\n{"prompt": "KING:"\n', capture_output=True,
                            text=True, timeout=120)
    assert result.returncode == 1 and "standard input:3 is not a JSON object, while 2 of its lines are" in result.stderr
    # ... but text prompts that hold JSON are text (a prompt asking for JSON, then an example)
    result = subprocess.run([sys.executable, "-m", "llmkit", "generate", str(ckpt), "--prompts", "-", "--greedy", "-n", "2",
                             "-o", str(tmp_path / "t.jsonl")], input='Write it as JSON:\n{"name": "x"}\n',
                            capture_output=True, text=True, timeout=120)
    assert result.returncode == 0, result.stderr[-2000:]
    assert [json.loads(line)["prompt"] for line in (tmp_path / "t.jsonl").read_text().splitlines()] == \
        ["Write it as JSON:", '{"name": "x"}']
    result = subprocess.run([sys.executable, "-m", "llmkit", "generate", str(ckpt), "--prompts", "-"], input="\n",
                            capture_output=True, text=True, timeout=120)
    assert result.returncode == 1 and result.stderr.strip() == ("error: standard input holds no prompt; write one per line "
                                                                "(.txt, or on standard input), or one record per line (.jsonl)")


def test_messages_on_a_checkpoint_without_role_tokens_is_one_line(cli, tmp_path, shakespeare):
    """A tokenizer without <|user|> & co (an imported GPT-2's) cannot render {"messages": ...}: said, with the way out."""
    ckpt = make_checkpoint(tmp_path / "plain", shakespeare[:5000], specials=SPECIALS[:3])
    talk = tmp_path / "talk.jsonl"
    talk.write_text(json.dumps({"messages": [{"role": "user", "content": "hi"}]}) + "\n")
    result = cli("generate", ckpt, "--prompts", talk, "-n", "2")
    lines = [l for l in result.output.strip().splitlines() if l.strip()]
    assert result.exit_code != 0 and len(lines) == 1, result.output
    assert "needs the special token(s) <|system|>, <|user|>, <|assistant|>" in lines[0] and "give text prompts" in lines[0]
    assert cli("generate", ckpt, "-p", "hi", "-n", "2").exit_code == 0


def test_prompts_that_are_not_unicode_are_one_line(cli, ckpt, tmp_path):
    """An undecodable byte on the command line (Python makes it a lone surrogate) or a lone
    surrogate escaped in JSON: named, with the prompt it is in, before the checkpoint loads."""
    bad = tmp_path / "bad.jsonl"
    bad.write_text('{"prompt": "fine"}\n{"prompt": "bad \\ud800 surrogate"}\n')
    for args, where in ((["-p", "ok", "-p", "ab\udcffcd"], "--prompt value 2 (ab\\xffcd)"), (["--prompts", bad], f"{bad}:2")):
        result = cli("generate", ckpt, *args, "-n", "3")
        lines = [l for l in result.output.strip().splitlines() if l.strip()]
        assert result.exit_code != 0 and len(lines) == 1, result.output
        assert lines[0].startswith(f"error: {where} is not valid Unicode text"), result.output
    # a JSON escape in the range Python's escaped bytes take is still an escape, not a byte
    bad.write_text('{"prompt": "bad \\udc80 x"}\n')
    line = cli("generate", ckpt, "--prompts", bad, "-n", "3").output.strip()
    assert "(a lone surrogate, \\udc80)" in line, line


def test_compile_refuses_a_recurrent_checkpoint(cli, tmp_path, shakespeare):
    ckpt = make_checkpoint(tmp_path / "lstm", shakespeare[:5000], arch="lstm", n_layer=1)
    result = cli("generate", ckpt, "-p", "A", "--compile")
    lines = [l for l in result.output.strip().splitlines() if l.strip()]
    assert result.exit_code != 0 and len(lines) == 1 and "--compile needs a single Transformer" in lines[0], result.output


def test_checkpoint_without_tokenizer(cli, tmp_path, shakespeare):
    ckpt = make_checkpoint(tmp_path / "broken", shakespeare[:5000])
    for name in ("tokenizer.json", "token_bytes.npy"):
        (ckpt / "tokenizer" / name).unlink()
    result = cli("generate", ckpt, "-p", "x")
    assert result.exit_code != 0 and "has no tokenizer" in result.output
    result = cli("eval", ckpt, "-m", "perplexity", "--data", tmp_path / "t.txt", "-o", tmp_path / "ev")
    assert result.exit_code != 0 and "has no tokenizer" in result.output


def test_prefix_is_never_recomputed():
    model = GPT(ModelConfig(vocab_size=97, context_length=48, n_layer=1, n_head=2, n_embd=16)).eval()
    widths, heads = [], []
    original = model.forward

    def recording(idx, targets=None, *, cache=None, **options):
        widths.append((idx.shape[1], cache is not None))
        logits, loss = original(idx, targets, cache=cache, **options)
        heads.append(logits.shape[1])
        return logits, loss

    model.forward = recording
    generate_ids(model, PROMPTS, GenerationParams(max_new_tokens=10, stop_at_eos=False), pad_id=0)
    assert widths[0] == (7, True)  # one prefill over the padded prompts
    assert widths[1:] == [(1, True)] * 9  # then one new token per step, through the cache
    assert heads == [1] * 10  # the head of the last position only, the prefill's too


@pytest.mark.parametrize("name, model", MODELS, ids=[m[0] for m in MODELS])
def test_generation_records_no_autograd_graph(name, model):
    # With autograd on, every step's graph hangs off the KV cache written in place, kept to the
    # end of the call: the tiny preset decoded at 0.74x transformers' speed instead of 1.28x.
    model.eval()
    assert all(p.requires_grad for p in model.parameters())  # as a loaded checkpoint's are
    outputs = []
    original = model.forward

    def recording(idx, targets=None, *, cache=None, **options):
        logits, loss = original(idx, targets, cache=cache, **options)
        outputs.append(logits)
        return logits, loss

    model.forward = recording
    try:
        generate_ids(model, PROMPTS, GenerationParams(max_new_tokens=4, stop_at_eos=False), pad_id=0)
    finally:
        del model.forward
    assert len(outputs) == 4 and not any(o.requires_grad or o.grad_fn for o in outputs)


def test_a_model_in_train_mode_generates_and_scores_as_in_eval_mode_and_stays_in_train_mode():
    """A model handed over straight from training (dropout on) would give noisy, unrepeatable text."""
    from llmkit.eval.loglik import Request, token_logprobs

    torch.manual_seed(0)
    model = GPT(ModelConfig(vocab_size=97, context_length=48, n_layer=2, n_head=2, n_embd=32, dropout=0.5))
    params = GenerationParams(max_new_tokens=12, temperature=1.0, seed=3, stop_at_eos=False)
    requests = [Request(seq=p + [4, 5], n=2) for p in PROMPTS]
    model.train()
    trained = ([r.token_ids for r in generate_ids(model, PROMPTS, params, pad_id=0)],
               [s.tolist() for s in token_logprobs(model, requests, pad_id=0)])
    assert model.training and all(m.training for m in model.modules())
    model.eval()
    evaluated = ([r.token_ids for r in generate_ids(model, PROMPTS, params, pad_id=0)],
                 [s.tolist() for s in token_logprobs(model, requests, pad_id=0)])
    assert trained == evaluated and not model.training


def test_config_file_sets_options(cli, ckpt, tmp_path):
    (tmp_path / "gen.toml").write_text("[generate]\nmax_new_tokens = 5\ntemperature = 0.0\nignore_eos = true\n")
    result = cli("generate", ckpt, "--config", tmp_path / "gen.toml", "-p", "KING:", "-o", tmp_path / "a.jsonl")
    assert result.exit_code == 0, result.output
    record = json.loads((tmp_path / "a.jsonl").read_text())
    assert record["completion_tokens"] == 5
    greedy = cli("generate", ckpt, "--greedy", "-n", "5", "--ignore-eos", "-p", "KING:", "-o", tmp_path / "b.jsonl")
    assert greedy.exit_code == 0 and json.loads((tmp_path / "b.jsonl").read_text())["completion"] == record["completion"]
    # the flag beats the file
    result = cli("generate", ckpt, "--config", tmp_path / "gen.toml", "-n", "7", "-p", "KING:", "-o", tmp_path / "c.jsonl")
    assert json.loads((tmp_path / "c.jsonl").read_text())["completion_tokens"] == 7


def _checkpoint_that_always_says(special: str, out: Path, text: str, task: dict | None = None) -> Path:
    """A checkpoint whose likeliest next token, whatever came before, is `special`."""
    from conftest import resign
    from llmkit.model.io import load_checkpoint, save_weights

    ckpt = make_checkpoint(out, text, task=task, norm="layernorm", bias=True)
    loaded = load_checkpoint(ckpt)
    model, target = loaded.model, loaded.tokenizer.special_ids[special]
    with torch.no_grad():  # the final norm's output made constant, its head row the likeliest by far
        model.tok_emb.weight[target] *= 5
        model.final_norm.weight.zero_()
        model.final_norm.bias.copy_(model.tok_emb.weight[target])
    save_weights(model, ckpt)
    resign(ckpt)
    return ckpt


def _greedy_completion(cli, ckpt: Path, out: Path, *flags: str) -> tuple[str, int, str]:
    result = cli("generate", ckpt, "-p", "Who are you?", "--greedy", "-n", "5", *flags, "-o", out, "--force")
    assert result.exit_code == 0, result.output
    record = json.loads(out.read_text())
    return record["completion"], record["completion_tokens"], record["finish_reason"]


def test_a_chat_reply_ends_at_any_special_token_in_generate_as_in_chat(cli, tmp_path, shakespeare):
    """<|bos|>, <|pad|> and <|mask|> have no place in a reply: generate stopped a chat model's answer
    only at role tokens, and printed the others' names into it (chat stopped at every one)."""
    from typer.testing import CliRunner

    from llmkit.cli import app
    from llmkit.data.templates import chat_template

    chat_task = {"task": "sft", "template": chat_template()}
    for special in ("<|pad|>", "<|bos|>"):
        ckpt = _checkpoint_that_always_says(special, tmp_path / f"chat{len(special)}{special[2]}", shakespeare[:20000], chat_task)
        for flags in ([], ["--ignore-eos"]):
            assert _greedy_completion(cli, ckpt, tmp_path / "c.jsonl", *flags) == ("", 0, "eos")
        piped = CliRunner().invoke(app, ["chat", str(ckpt), "--greedy", "-n", "5"], input="Who are you?\n")
        assert piped.exit_code == 0 and piped.stdout.strip() == "", piped.output


def test_the_unknown_token_of_a_tokenizer_without_byte_fallback_ends_no_completion():
    """<unk> is marked special, yet it stands for text the model saw (any character without a
    token): a completion ended at the first such character."""
    from tokenizers import Tokenizer, models, pre_tokenizers

    from llmkit.data.tokenizer import TextTokenizer, token_byte_lengths
    from llmkit.inference.prompts import chat_stop_ids, text_stop_ids

    vocab = {"<unk>": 0, "<|bos|>": 1, "<|eos|>": 2, "<|pad|>": 3, "hello": 4, "world": 5}
    hf = Tokenizer(models.WordLevel(vocab, unk_token="<unk>"))
    hf.pre_tokenizer = pre_tokenizers.Whitespace()
    hf.add_special_tokens(["<unk>", "<|bos|>", "<|eos|>", "<|pad|>"])
    tok = TextTokenizer(hf, np.asarray(token_byte_lengths(hf)), roles={"bos": "<|bos|>", "eos": "<|eos|>", "pad": "<|pad|>"})
    assert hf.encode("hello ☃ world").ids == [4, 0, 5] and tok.special_ids["<unk>"] == 0
    assert text_stop_ids(tok, 1, past_eos=False) == chat_stop_ids(tok) == [1, 3]
    assert text_stop_ids(tok, 1, past_eos=True) == [3]


def test_a_base_models_completion_ends_at_a_special_token_not_its_name_written_out(cli, tmp_path, shakespeare):
    """A base model that sampled <|pad|> or a role token (never in its training text) wrote
    "<|pad|>" into its completion; past an end (--ignore-eos) the document start goes on, as it
    follows a document's end in the shards, and is no part of the completion's text."""
    for special in ("<|pad|>", "<|user|>", "<|bos|>"):
        ckpt = _checkpoint_that_always_says(special, tmp_path / f"base{len(special)}{special[2]}", shakespeare[:20000])
        assert _greedy_completion(cli, ckpt, tmp_path / "c.jsonl") == ("", 0, "eos")
        past_the_end = _greedy_completion(cli, ckpt, tmp_path / "c.jsonl", "--ignore-eos")
        if special == "<|bos|>":  # (the recorded document start: <|bos|> by default)
            # counted, and left out of the text (its name was written there, which eval read as words)
            assert past_the_end == ("", 5, "length"), past_the_end
        else:
            assert past_the_end == ("", 0, "eos")


def test_fine_tuned_templates_frame_prompts(cli, tmp_path, shakespeare):
    from llmkit.data.templates import encode_chat_prompt
    from llmkit.inference.prompts import chat_stop_ids
    from llmkit.model.io import load_checkpoint

    text_task = {
        "task": "sft",
        "template": {"type": "text", "prompt": "Translate:\n{source}\nTranslation:", "response": " {target}", "input_field": "source"},
        "prompt_template": "Translate:\n{source}\nTranslation:",
    }
    ckpt = make_checkpoint(tmp_path / "sft", shakespeare[:20000], task=text_task)
    result = cli("generate", ckpt, "-p", "Guten Tag", "--greedy", "-n", "6", "--ignore-eos", "-o", tmp_path / "a.jsonl")
    assert result.exit_code == 0, result.output
    record = json.loads((tmp_path / "a.jsonl").read_text())
    # printed, the answer to a framed prompt goes on a line of its own (it was glued to the prompt, as a
    # continuation of it, where no terminal's dim style marked the seam); a base model's continues it
    for args in (["-p", "Guten Tag"], ["-p", "Guten Tag", "-p", "Hallo"]):  # (streamed; printed per batch)
        printed = cli("generate", ckpt, *args, "--greedy", "-n", "6", "--ignore-eos")
        assert printed.exit_code == 0 and "Guten Tag\n" + record["completion"] + "\n" in printed.stdout, printed.stdout
    base = make_checkpoint(tmp_path / "base", shakespeare[:20000])
    assert cli("generate", base, "-p", "Guten Tag", "--greedy", "-n", "6", "--ignore-eos", "-o", tmp_path / "b.jsonl").exit_code == 0
    continued = json.loads((tmp_path / "b.jsonl").read_text())["completion"]
    assert cli("generate", base, "-p", "Guten Tag", "--greedy", "-n", "6", "--ignore-eos").stdout == f"Guten Tag{continued}\n"
    # the streamed prompt piped byte for byte too (rich expanded its tab), as one printed per batch is
    assert cli("generate", base, "-p", "Guten\tTag", "--greedy", "-n", "2").stdout.startswith("Guten\tTag")
    loaded = load_checkpoint(ckpt)
    tok = loaded.tokenizer
    ids = [tok.bos_id] + tok.encode("Translate:\nGuten Tag\nTranslation:")
    expected = Generator(loaded.model, tok).complete([ids], GenerationParams(max_new_tokens=6, stop_at_eos=False))[0]
    assert record["prompt_tokens"] == len(ids) and record["completion"] == expected.text

    chat_task = {"task": "sft", "template": {"type": "chat", "bos": "<|bos|>"}}
    chat = make_checkpoint(tmp_path / "chat", shakespeare[:20000], task=chat_task)
    result = cli("generate", chat, "-p", "Who are you?", "--greedy", "-n", "8", "-o", tmp_path / "c.jsonl")
    assert result.exit_code == 0, result.output
    record = json.loads((tmp_path / "c.jsonl").read_text())
    loaded = load_checkpoint(chat)
    ids = encode_chat_prompt([{"role": "user", "content": "Who are you?"}], loaded.tokenizer)
    assert ids[-1] == loaded.tokenizer.special_ids["<|assistant|>"]
    expected = Generator(loaded.model, loaded.tokenizer).complete(
        [ids], GenerationParams(max_new_tokens=8), extra_stop_ids=chat_stop_ids(loaded.tokenizer)
    )[0]
    assert record["prompt_tokens"] == len(ids) and record["completion"] == expected.text


def test_sampling_filters_equal_transformers_processors():
    from transformers.generation.logits_process import (
        RepetitionPenaltyLogitsProcessor,
        TemperatureLogitsWarper,
        TopKLogitsWarper,
        TopPLogitsWarper,
    )

    from llmkit.inference.sampling import apply_repetition_penalty

    g = torch.Generator().manual_seed(0)
    logits = torch.randn(4, 300, generator=g) * 3
    history = torch.randint(0, 300, (4, 20), generator=g)
    seen = torch.zeros(4, 300, dtype=torch.bool).scatter_(1, history, True)
    ours = apply_repetition_penalty(logits, seen, 1.3)
    theirs = RepetitionPenaltyLogitsProcessor(1.3)(history, logits.clone())
    assert torch.allclose(ours, theirs)
    scaled = TemperatureLogitsWarper(0.7)(history, logits.clone())
    assert torch.equal(torch.isinf(filter_top_k(scaled, 17)), torch.isinf(TopKLogitsWarper(17)(history, scaled.clone())))
    for p in (0.3, 0.9, 0.99):
        assert torch.equal(torch.isinf(filter_top_p(scaled, p)), torch.isinf(TopPLogitsWarper(p)(history, scaled.clone())))
    # a vocabulary GPT-2's size: top-p looks at the likeliest 64, then 512, tokens before it sorts them all
    # (a sort cost 5 ms a token); rows whose nucleus ends within each, and one past them (a flat row)
    from llmkit.inference.sampling import TOP_P_CANDIDATES

    vocab = torch.randn(4, 50257, generator=g)
    sizes = set()
    for scales, p in (((12.0, 9.0, 12.0, 6.0), 0.9), ((12.0, 4.5, 4.2, 12.0), 0.9), ((12.0, 9.0, 2.0, 12.0), 0.95)):
        scaled = vocab * torch.tensor(scales)[:, None]
        kept = (~torch.isinf(filter_top_p(scaled, p))).sum(-1)
        theirs = TopPLogitsWarper(p)(history, scaled.clone())
        assert torch.equal(torch.isinf(filter_top_p(scaled, p)), torch.isinf(theirs)), (scales, kept)
        sizes.add(int(kept.max()))
    small, middle, large = sorted(sizes)  # a batch's nucleus within 64 tokens, within 512, and past them
    assert small < TOP_P_CANDIDATES[0] < middle < TOP_P_CANDIDATES[1] < large, sizes
    # bf16 logits tie often, and a top-k and a sort order tied tokens each their own way: a row's nucleus
    # is the same alone as beside a flat row, which sends its batch to the sort (it changed in 42 of 240 rows)
    flat = torch.randn(1, 50257, generator=g) * 0.3
    changed = 0
    for scale in (2.5, 4.0, 8.0):
        for p in (0.5, 0.9, 0.95):
            for _ in range(4):
                row = (torch.randn(1, 50257, generator=g) * scale).to(torch.bfloat16).float()
                alone, batched = filter_top_p(row, p), filter_top_p(torch.cat([row, flat]), p)[:1]
                changed += not torch.equal(torch.isinf(alone), torch.isinf(batched))
    assert changed == 0


def _twin_models(config: ModelConfig, seed: int):
    """(llmkit's GPT, transformers' model with the same weights) for parity tests, pad id 0."""
    from transformers import AutoModelForCausalLM

    from llmkit.model.hf_config import to_hf_config
    from llmkit.model.hf_weights import to_hf_state

    torch.manual_seed(seed)
    model = GPT(config).eval()
    hf_config = to_hf_config(config)
    hf_config.pad_token_id = 0
    hf = AutoModelForCausalLM.from_config(hf_config).eval()
    hf.load_state_dict(to_hf_state(model.state_dict(), config), strict=False)
    hf.tie_weights()
    return model, hf


def _left_padded(prompts: list[list[int]]) -> tuple[torch.Tensor, torch.Tensor, int]:
    """transformers' input_ids and attention_mask of `prompts` left-padded with 0, and their width."""
    width = max(len(p) for p in prompts)
    ids = torch.tensor([[0] * (width - len(p)) + p for p in prompts])
    mask = (torch.arange(width)[None] >= torch.tensor([width - len(p) for p in prompts])[:, None]).long()
    return ids, mask, width


def test_greedy_equals_transformers_generate_with_left_padding():
    for config in (
        ModelConfig(vocab_size=97, context_length=48, n_layer=2, n_head=2, n_embd=32, **GPT2_SHAPE),
        ModelConfig(vocab_size=97, context_length=48, n_layer=2, n_head=4, n_kv_head=2, n_embd=32),
    ):
        model, hf = _twin_models(config, seed=0)
        ours = [r.token_ids for r in generate_ids(model, PROMPTS, GenerationParams(max_new_tokens=15, stop_at_eos=False), pad_id=0)]
        ids, mask, width = _left_padded(PROMPTS)
        with torch.no_grad():
            out = hf.generate(input_ids=ids, attention_mask=mask, max_new_tokens=15, min_new_tokens=15, do_sample=False, pad_token_id=0, eos_token_id=None)
        assert ours == out[:, width:].tolist()
        # --min-new-tokens: an end token each row would pick early is held off until then, as transformers' min_new_tokens
        end = ours[0][0]  # (the first row's first token: its completion would end at once)
        for least in (0, 4):
            held = [r.token_ids for r in generate_ids(model, PROMPTS, GenerationParams(max_new_tokens=15, min_new_tokens=least),
                                                      pad_id=0, eos_ids=[end])]
            with torch.no_grad():
                out = hf.generate(input_ids=ids, attention_mask=mask, max_new_tokens=15, min_new_tokens=least, do_sample=False,
                                  pad_token_id=0, eos_token_id=end)
            theirs = [row[: row.index(end)] if end in row else row for row in out[:, width:].tolist()]
            assert held == theirs, (least, held, theirs)
            assert (held[0] == []) == (least == 0) and all(len(tokens) >= least for tokens in held)


def test_backslash_n_on_the_command_line_is_a_newline(cli, ckpt, tmp_path):
    from llmkit.data.tokenizer import load_tokenizer

    tok = load_tokenizer(ckpt / "tokenizer")
    result = cli("generate", ckpt, "-p", "KING:\\nQUEEN:", "-n", "3", "--greedy", "--stop", "\\n", "-o", tmp_path / "a.jsonl")
    assert result.exit_code == 0, result.output
    record = json.loads((tmp_path / "a.jsonl").read_text())
    assert record["prompt"] == "KING:\nQUEEN:" and record["prompt_tokens"] == 1 + len(tok.encode("KING:\nQUEEN:"))
    assert "\n" not in record["completion"]


def test_top_k_0_samples_from_every_token(ckpt):
    """--top-k 0 turns top-k off: chat's default of 50 had no way off (the range began at 1). It is
    recorded as no top-k, so `generate --top-k 0` and `generate` are one configuration."""
    from typer.testing import CliRunner

    from llmkit.cli import app
    from llmkit.generate.config import ChatConfig, GenerateConfig

    assert ChatConfig.build().sampling.top_k == 50 and ChatConfig.build(top_k=0).sampling.params(0).top_k is None
    assert GenerateConfig.build(top_k=0).hashed() == GenerateConfig.build().hashed()
    chatted = CliRunner().invoke(app, ["chat", str(ckpt), "--top-k", "0", "-n", "5"], input="ROMEO:\n")
    assert chatted.exit_code == 0, chatted.output


def test_greedy_agrees_with_temperature_0_and_refuses_any_other_temperature_or_top_k_given(cli, ckpt, tmp_path):
    """--greedy is temperature 0: the two together agree (they were refused), while a temperature
    given beside it is refused even when it equals the stage's default (0.8 typed was accepted)."""
    from typer.testing import CliRunner

    from llmkit.cli import app

    from llmkit.generate.config import ChatConfig, GenerateConfig

    for config in (GenerateConfig, ChatConfig):
        assert config.build(greedy=True).sampling.params(0).greedy
        assert config.build(greedy=True, temperature=0.0).sampling.params(0).greedy
        for temperature in (0.5, config.build().sampling.temperature):
            with pytest.raises(ValueError, match="--greedy takes the most likely token"):
                config.build(greedy=True, temperature=temperature)
    assert cli("generate", ckpt, "-p", "x", "--greedy", "--temperature", "0", "-n", "2").exit_code == 0
    (tmp_path / "g.toml").write_text("temperature = 0.0\ngreedy = true\n")
    assert cli("generate", ckpt, "-p", "x", "--config", tmp_path / "g.toml", "-n", "2").exit_code == 0
    (tmp_path / "g.toml").write_text("temperature = 0.8\n")
    result = cli("generate", ckpt, "-p", "x", "--config", tmp_path / "g.toml", "--greedy", "-n", "2")
    assert result.exit_code != 0 and "--temperature 0.8 contradicts" in result.output, result.output
    # top-k / top-p narrow a draw greedy decoding never makes: ignored unsaid before; chat's own top-k 50 is no one's typing
    for stage, args, named in (("generate", ["--temperature", "0", "--top-p", "0.5"], "--temperature 0 takes"),
                               ("generate", ["--greedy", "--top-k", "5", "--top-p", "0.9"], "--top-k 5 and --top-p 0.9"),
                               ("chat", ["--greedy", "--top-k", "7"], "--top-k 7 would change nothing")):
        result = CliRunner().invoke(app, [stage, str(ckpt), *(["-p", "x", "-n", "2"] if stage == "generate" else []), *args],
                                    input="hi\n")
        assert result.exit_code == 2 and named in result.output and "Traceback" not in result.output, result.output
    assert CliRunner().invoke(app, ["chat", str(ckpt), "--greedy", "-n", "2"], input="hi\n").exit_code == 0


def test_an_empty_stop_string_in_a_config_file_is_refused_as_on_the_command_line(cli, ckpt, tmp_path):
    (tmp_path / "s.toml").write_text('stop = [""]\n')
    result = cli("generate", ckpt, "-p", "x", "--config", tmp_path / "s.toml", "-n", "2")
    lines = [line for line in result.output.strip().splitlines() if line.strip()]
    assert result.exit_code != 0 and len(lines) == 1 and "an empty stop string would stop at once" in lines[0], result.output


def test_a_template_prompt_too_long_loses_the_end_of_its_input_not_the_template(cli, shakespeare, tmp_path):
    """The sliding window would keep a prompt's last tokens, dropping the first token and the
    template's wording; a text-template fine-tune's prompt is cut at the end of its input instead."""
    from llmkit.inference.prompts import Prompt, fit_prompt
    from llmkit.model.io import load_checkpoint

    task = {"task": "sft", "template": {"type": "text", "prompt": "Translate:\n{source}\nTranslation:", "response": " {target}",
                                        "input_field": "source"}}
    ckpt = make_checkpoint(tmp_path / "sft", shakespeare[:20_000], task=task)
    loaded = load_checkpoint(ckpt)
    long = shakespeare[1000:3000]
    ids = fit_prompt(Prompt(text=long), loaded.tokenizer, loaded.task, 40)
    text = loaded.tokenizer.decode(ids[1:])
    assert len(ids) <= 40 and ids[0] == loaded.tokenizer.bos_id
    assert text.startswith("Translate:\n" + long[:10]) and text.endswith("\nTranslation:")
    result = cli("generate", ckpt, "-p", long, "-n", "8", "--greedy")
    assert result.exit_code == 0 and "a template's end of input were left out" in " ".join(result.output.split()), result.output
    talk = tmp_path / "talk.jsonl"
    talk.write_text(json.dumps({"messages": [{"role": "user", "content": "hi"}]}) + "\n")
    refused = cli("generate", ckpt, "--prompts", talk, "-n", "2")
    assert refused.exit_code != 0 and "not on conversations" in refused.output
    two = {"task": "sft", "template": {"type": "text", "prompt": "Context: {context}\nQ: {question}\nA:", "response": " {answer}",
                                       "input_field": "context"}}
    ckpt2 = make_checkpoint(tmp_path / "two", shakespeare[:20_000], task=two)
    result = cli("generate", ckpt2, "-p", "some context", "-n", "2", "--greedy")
    assert result.exit_code == 0 and "also reads question, left empty" in result.output, result.output
    # a record filling both fields: the longer (the context) loses its end, the question stays whole
    loaded2 = load_checkpoint(ckpt2)
    record = {"context": long, "question": "Who speaks first?"}
    ids = fit_prompt(Prompt(record=record), loaded2.tokenizer, loaded2.task, 40)
    text = loaded2.tokenizer.decode(ids[1:])
    assert len(ids) <= 40 and text.startswith("Context: " + long[:5]) and text.endswith("\nQ: Who speaks first?\nA:")


@pytest.mark.parametrize("new_tokens", [60, 100])
def test_a_template_prompt_keeps_its_template_beside_a_reply_near_or_past_the_context(cli, shakespeare, tmp_path, monkeypatch,
                                                                                       new_tokens):
    """The input is cut to what the window keeps of a prompt (half the context here), so the first
    token and the template's wording stay; the budget was context - n + 1, too small for the
    wording, and the window then cut the whole prompt from the left."""
    from llmkit.data.tokenizer import load_tokenizer
    from llmkit.inference import engine

    task = {"task": "sft", "template": {"type": "text", "prompt": "Translate:\n{source}\nTranslation:", "response": " {target}",
                                        "input_field": "source"}}
    ckpt = make_checkpoint(tmp_path / "sft", shakespeare[:20_000], task=task)
    tok = load_tokenizer(ckpt / "tokenizer")
    prefilled = []
    real_prefill = engine._Window.prefill
    monkeypatch.setattr(engine._Window, "prefill", lambda self, rows: prefilled.append(rows[0]) or real_prefill(self, rows))
    result = cli("generate", ckpt, "-p", shakespeare[1000:3000], "-n", new_tokens, "--greedy", "--ignore-eos")
    assert result.exit_code == 0 and "a template's end of input were left out" in " ".join(result.output.split()), result.output
    first = prefilled[0]
    assert len(first) <= 32 and first[0] == tok.bos_id, first
    assert tok.decode(first[1:]).startswith("Translate:\n" + shakespeare[1000:1010]) and tok.decode(first).endswith("\nTranslation:")


def test_a_conversation_longer_than_the_context_loses_its_oldest_exchanges_as_in_chat_and_eval(cli, shakespeare, tmp_path):
    """Cut from the left by the window, it lost <|bos|> and its system message first."""
    from llmkit.data.templates import drop_oldest_exchanges, encode_chat_prompt
    from llmkit.inference.engine import prompt_keep
    from llmkit.model.io import load_checkpoint

    chat = make_checkpoint(tmp_path / "chat", shakespeare[:20000], task={"task": "sft", "template": {"type": "chat"}})
    messages = [{"role": "system", "content": "Answer as a king."}]
    for turn in range(6):
        messages += [{"role": "user", "content": f"What news from the north, turn {turn}?"},
                     {"role": "assistant", "content": "The army marches south."}]
    messages.append({"role": "user", "content": "And now?"})
    (tmp_path / "p.jsonl").write_text(json.dumps({"messages": messages}) + "\n")
    result = cli("generate", chat, "--prompts", tmp_path / "p.jsonl", "--greedy", "-n", "8", "-o", tmp_path / "c.jsonl")
    assert result.exit_code == 0 and "oldest exchanges" in " ".join(result.output.split()), result.output
    loaded = load_checkpoint(chat)
    limit = loaded.model.config.context_length
    kept, dropped = drop_oldest_exchanges(messages, loaded.tokenizer, prompt_keep(limit, 8))
    assert dropped and kept[0] == messages[0] and kept[-1] == messages[-1]
    record = json.loads((tmp_path / "c.jsonl").read_text())
    assert record["prompt_tokens"] == len(encode_chat_prompt(kept, loaded.tokenizer))
    # beside the messages as given, the fitted text the model saw (it was not in the record)
    assert record["fitted_prompt"] == loaded.tokenizer.decode(encode_chat_prompt(kept, loaded.tokenizer))
    assert record["messages"] == messages and record["prompt"] is None


def test_a_conversation_that_ends_with_a_reply_has_that_reply_made_again(cli, shakespeare, tmp_path):
    """finetune's data and `chat -o` transcripts end with the assistant's reply: generate answers the
    history before it (as eval scores it), keeping the old reply as the reference; it used to append a
    second assistant turn after it, a layout no fine-tune trains on."""
    from llmkit.data.templates import encode_chat_prompt
    from llmkit.model.io import load_checkpoint

    chat = make_checkpoint(tmp_path / "chat", shakespeare[:20000], task={"task": "sft", "template": {"type": "chat"}})
    history = [{"role": "user", "content": "What news?"}]
    (tmp_path / "p.jsonl").write_text(json.dumps({"messages": [*history, {"role": "assistant", "content": "None."}]}) + "\n"
                                      + json.dumps({"messages": [{"role": "assistant", "content": "Alone."}]}) + "\n")
    result = cli("generate", chat, "--prompts", tmp_path / "p.jsonl", "--greedy", "-n", "4", "-o", tmp_path / "c.jsonl")
    assert result.exit_code == 1 and "p.jsonl:2: its messages hold no user message" in result.output, result.output
    (tmp_path / "p.jsonl").write_text((tmp_path / "p.jsonl").read_text().splitlines()[0] + "\n")
    result = cli("generate", chat, "--prompts", tmp_path / "p.jsonl", "--greedy", "-n", "4", "-o", tmp_path / "c.jsonl")
    assert result.exit_code == 0, result.output
    made = json.loads((tmp_path / "c.jsonl").read_text())
    assert made["reference"] == "None." and made["messages"] == history
    assert made["prompt_tokens"] == len(encode_chat_prompt(history, load_checkpoint(chat).tokenizer))


def test_a_conversation_whose_last_message_is_too_long_loses_that_messages_end(cli, shakespeare, tmp_path, monkeypatch):
    """With no exchange left to drop, the window cut the prompt from the left: <|bos|>, the system
    message and the role tokens went. The last message loses its end, as chat cuts one."""
    from llmkit.data.templates import encode_chat_prompt
    from llmkit.inference import engine
    from llmkit.inference.engine import prompt_keep
    from llmkit.model.io import load_checkpoint

    chat = make_checkpoint(tmp_path / "chat", shakespeare[:20000], task={"task": "sft", "template": {"type": "chat"}})
    loaded = load_checkpoint(chat)
    messages = [{"role": "system", "content": "Be brief."}, {"role": "user", "content": shakespeare[2000:6000]}]
    (tmp_path / "p.jsonl").write_text(json.dumps({"messages": messages}) + "\n")
    prefilled = []
    real_prefill = engine._Window.prefill
    monkeypatch.setattr(engine._Window, "prefill", lambda self, rows: prefilled.append(rows[0]) or real_prefill(self, rows))
    result = cli("generate", chat, "--prompts", tmp_path / "p.jsonl", "--greedy", "-n", "8")
    assert result.exit_code == 0 and "last message's end" in " ".join(result.output.split()), result.output
    budget = prompt_keep(loaded.model.config.context_length, 8)
    first = prefilled[0]
    head = encode_chat_prompt([messages[0], {"role": "user", "content": ""}], loaded.tokenizer)
    user_role = len(encode_chat_prompt(messages[:1], loaded.tokenizer)) - 1  # where <|user|> stands, after the system turn
    assert budget - 8 < len(first) <= budget
    assert first[:user_role + 1] == head[:user_role + 1] and first[-1] == head[-1]  # <|bos|> system <|user|> ... <|assistant|>
    cut = loaded.tokenizer.decode(first[user_role + 1:-1])
    assert shakespeare[2000:6000].startswith(cut.strip()[:200]) and len(cut) < 4000


def test_a_system_message_or_template_wording_longer_than_the_room_is_refused_not_cut_from_its_start(cli, shakespeare, tmp_path):
    """Where even an empty last message (or input) does not fit, the window cut the prompt from its
    start, <|bos|> and the system message (or the template's instruction) with it; chat and eval refuse
    it, and so does generate now, in one line, writing nothing."""
    chat = make_checkpoint(tmp_path / "chat", shakespeare[:20000], task={"task": "sft", "template": {"type": "chat"}})
    messages = [{"role": "system", "content": shakespeare[:3000]}, {"role": "user", "content": "Hi"}]
    (tmp_path / "p.jsonl").write_text(json.dumps({"prompt": "fits"}) + "\n" + json.dumps({"messages": messages}) + "\n")
    result = cli("generate", chat, "--prompts", tmp_path / "p.jsonl", "--greedy", "-n", "8", "-o", tmp_path / "out.jsonl")
    message = result.output.strip()
    assert result.exit_code != 0 and len(message.splitlines()) == 1, message
    assert "prompt 2: the conversation takes" in message and "with its last message empty" in message, message
    assert not (tmp_path / "out.jsonl").exists()
    task = {"task": "sft", "template": {"type": "text", "prompt": shakespeare[:3000] + "\n{source}\nTranslation:",
                                        "response": " {target}", "input_field": "source"}}
    wordy = make_checkpoint(tmp_path / "wordy", shakespeare[:20000], task=task)
    result = cli("generate", wordy, "-p", "short", "--greedy", "-n", "8")
    assert result.exit_code != 0 and "prompt 1: the template's wording alone takes" in result.output, result.output


def test_a_chat_fine_tune_is_prompted_with_a_records_system_message(ckpt, tmp_path):
    """{"prompt", "system"} records train as system, user, assistant (templates.record_messages):
    generate --prompts gives the system message too (it was dropped)."""
    from llmkit.data.templates import encode_chat_prompt
    from llmkit.inference.prompts import encode_prompt, read_prompt_file
    from llmkit.model.io import load_checkpoint
    from llmkit.model.records import TaskRecord

    tokenizer = load_checkpoint(ckpt).tokenizer
    (tmp_path / "p.jsonl").write_text(json.dumps({"prompt": "Who are you?", "system": "Be brief."}) + "\n"
                                      + json.dumps({"prompt": "And now?"}) + "\n")
    with_system, without = read_prompt_file(tmp_path / "p.jsonl")
    chat = TaskRecord(task="sft", template={"type": "chat"})
    assert encode_prompt(with_system, tokenizer, chat) == encode_chat_prompt(
        [{"role": "system", "content": "Be brief."}, {"role": "user", "content": "Who are you?"}], tokenizer)
    assert encode_prompt(without, tokenizer, chat) == encode_chat_prompt([{"role": "user", "content": "And now?"}], tokenizer)


def test_a_txt_prompt_file_is_split_at_newlines_only_without_its_byte_order_mark(tmp_path):
    """A form feed, a vertical tab, NEL or U+2028 inside a line is part of that prompt (str.splitlines
    split there); a Windows editor's byte-order mark and CRLF line ends are not part of any prompt."""
    from llmkit.inference.prompts import read_prompt_file

    (tmp_path / "breaks.txt").write_bytes("first\fsecond\nthird\u2028line\vx\x85y\n".encode("utf-8"))
    assert [p.text for p in read_prompt_file(tmp_path / "breaks.txt")] == ["first\fsecond", "third\u2028line\vx\x85y"]
    (tmp_path / "windows.txt").write_bytes(b"\xef\xbb\xbfalpha\r\nbeta\r\n")
    assert [p.text for p in read_prompt_file(tmp_path / "windows.txt")] == ["alpha", "beta"]
    # so in a .jsonl (every stage's JSON Lines reader), where it was refused as not JSON
    (tmp_path / "windows.jsonl").write_bytes(b'\xef\xbb\xbf{"prompt": "alpha"}\r\n{"prompt": "beta"}\r\n')
    assert [p.text for p in read_prompt_file(tmp_path / "windows.jsonl")] == ["alpha", "beta"]


def test_a_completion_cut_by_the_length_inside_a_character_keeps_the_whole_characters_before_it(ckpt, monkeypatch):
    """Byte-level tokens: --max-new-tokens may stop two bytes into a three-byte character, which
    decoded to U+FFFD in the completion and on screen (chat dropped it; generate did not)."""
    from llmkit.inference import engine
    from llmkit.model.io import load_checkpoint

    loaded = load_checkpoint(ckpt)
    tok = loaded.tokenizer
    byte_ids = {bytes(tok.id_to_bytes(i)): i for i in range(tok.vocab_size) if len(tok.id_to_bytes(i)) == 1}
    written = [*tok.encode("Two dogs "), byte_ids[b"\xe5"], byte_ids[b"\xa4"]]  # 大 is e5 a4 a7: cut before its last byte

    def writes(model, prompts, params, *, on_step=None, **kwargs):
        for token in written:
            on_step([token])
        return [engine.RowResult(list(written), "length")]

    monkeypatch.setattr(engine, "generate_ids", writes)
    streamed = []
    [cut] = Generator(loaded.model, tok).complete(["x"], GenerationParams(max_new_tokens=len(written)),
                                                  on_text=lambda row, piece: streamed.append(piece))
    assert cut.text == "Two dogs " == "".join(streamed) and cut.finish_reason == "length"
    # a whole U+FFFD the model wrote (web text holds them) is a character: it stays
    written[-2:] = [byte_ids[b"\xef"], byte_ids[b"\xbf"], byte_ids[b"\xbd"]]
    streamed.clear()
    [whole] = Generator(loaded.model, tok).complete(["x"], GenerationParams(max_new_tokens=len(written)),
                                                    on_text=lambda row, piece: streamed.append(piece))
    assert whole.text == "Two dogs \ufffd" == "".join(streamed)


def test_the_repetition_penalty_leaves_the_prompts_framing_tokens_alone(ckpt):
    """The document start (<|eos|> for a model pretrained on default shards) was marked as seen, so
    the penalty pushed the end-of-text token down from the first step."""
    import llmkit.inference.engine as engine
    from llmkit.model.io import load_checkpoint

    loaded = load_checkpoint(ckpt)
    tok = loaded.tokenizer
    prompt = [tok.eos_id, *tok.encode("ROMEO:")]
    seen_rows = []
    real = engine.next_tokens

    def spy(logits, params, generators, seen):
        seen_rows.append(seen.clone())
        return real(logits, params, generators, seen)

    with pytest.MonkeyPatch.context() as patch:
        patch.setattr(engine, "next_tokens", spy)
        Generator(loaded.model, tok).complete([prompt], GenerationParams(max_new_tokens=1, repetition_penalty=1.3))
    first = seen_rows[0][0]
    assert not first[tok.eos_id] and all(first[t] for t in prompt[1:])


def test_weights_or_a_tokenizer_changed_in_place_are_refused(cli, ckpt, tmp_path):
    """A byte of the weights, of token_bytes.npy or of model_config.json changed, the size kept: load's
    size check passes, the hash beside the read does not (generate used such weights, and eval
    recorded the fingerprint of others; a rope_theta edited 10000 -> 90000 until 2026-12-07)."""
    for name in ("model.safetensors", "tokenizer/token_bytes.npy", "model_config.json"):
        folder = tmp_path / name.replace("/", "-")
        shutil.copytree(ckpt, folder)
        data = bytearray((folder / name).read_bytes())
        if name.endswith(".json"):
            at = data.index(b'"n_layer": ') + len(b'"n_layer": ')
            data[at] = ord(str((int(chr(data[at])) + 1) % 10))  # (another depth, written in as many bytes)
        else:
            data[-1] ^= 1
        (folder / name).write_bytes(bytes(data))
        result = cli("generate", folder, "-p", "To be", "-n", "4")
        said = " ".join(result.output.split())
        assert result.exit_code == 1 and f"{folder / name} was changed after the artifact {folder} was written" in said, said
    # numpy's own words about a damaged file advise loading it unsafely: not quoted
    folder = tmp_path / "zeroed"
    shutil.copytree(ckpt, folder)
    size = (folder / "tokenizer" / "token_bytes.npy").stat().st_size
    (folder / "tokenizer" / "token_bytes.npy").write_bytes(bytes(size))
    from llmkit.data.tokenizer import _token_bytes
    from llmkit.errors import UserError

    with pytest.raises(UserError, match="is damaged \\(not an integer array numpy reads\\)") as damaged:
        _token_bytes(folder / "tokenizer" / "token_bytes.npy")
    assert "unsafely" not in str(damaged.value)


def test_a_completion_stopped_after_a_character_of_several_tokens_keeps_them_all(ckpt, monkeypatch):
    """Through Generator.complete (the call site, not tokens_of_text alone): a stop string after a character
    whose bytes are three tokens keeps all three (by length, its first two passed for it: completion_tokens
    was one short and token_ids decoded to U+FFFD)."""
    from llmkit.inference import engine
    from llmkit.model.io import load_checkpoint

    loaded = load_checkpoint(ckpt)
    tok = loaded.tokenizer
    wanted = tok.encode("情如尼")
    assert len(wanted) == 9  # one token per byte

    def scripted(model, prompts, params, *, on_step=None, **_):
        ids = []
        for token in wanted:
            ids.append(token)
            if on_step is not None and on_step([token]):
                return [engine.RowResult(token_ids=ids, finish_reason="stop")]
        return [engine.RowResult(token_ids=ids, finish_reason="length")]

    monkeypatch.setattr(engine, "generate_ids", scripted)
    for streamed in (None, lambda row, piece: None):
        (done,) = Generator(loaded.model, tok).complete(["x"], GenerationParams(max_new_tokens=9, stop=["如尼"]), on_text=streamed)
        assert done.text == "情" and done.token_ids == wanted[:3] and tok.decode(done.token_ids) == "情", done


def test_records_reach_the_output_as_each_batch_ends_when_samples_outnumber_the_batch(ckpt, tmp_path, monkeypatch):
    """-s 5 --batch-size 2: a prompt's samples take three batches, each written as it ends, so a run
    stopped in the third keeps the first four in .partial (it waited for the prompt's five: nothing)."""
    from llmkit.generate.config import GenerateConfig
    from llmkit.generate.stage import JsonlOutput, run_generate
    from llmkit.inference import engine

    cfg = GenerateConfig.build(prompts=["KING:", "To be"], num_samples=5, batch_size=2, max_new_tokens=6, seed=3)
    whole = run_generate(ckpt, cfg)
    calls = 0
    real = engine.generate_ids

    def stopping_in_the_third_batch(*args, **kwargs):
        nonlocal calls
        calls += 1
        if calls == 3:
            raise KeyboardInterrupt
        return real(*args, **kwargs)

    monkeypatch.setattr(engine, "generate_ids", stopping_in_the_third_batch)
    with pytest.raises(KeyboardInterrupt):
        with JsonlOutput(tmp_path / "s.jsonl", cfg) as output:
            run_generate(ckpt, cfg, on_batch=output.write)
    kept = [json.loads(line) for line in (tmp_path / "s.jsonl.partial").read_text().splitlines()]
    assert [(r["prompt"], r["completion"]) for r in kept] == [("KING:", g.completion.text) for g in whole[:4]]
    assert len(whole) == 10 and [g.completion.sample_index for g in whole[:6]] == [0, 1, 2, 3, 4, 0]


def test_conversations_given_to_a_base_model_are_said_to_be_framed_in_a_template_it_never_saw(cli, tmp_path, shakespeare):
    """generate framed {"messages": ...} prompts for a base model without a word, where chat notes it and eval refuses."""
    talk = tmp_path / "talk.jsonl"
    talk.write_text(json.dumps({"messages": [{"role": "user", "content": "hi"}]}) + "\n")
    base = make_checkpoint(tmp_path / "base", shakespeare[:20000])
    result = cli("generate", base, "--prompts", talk, "-n", "2", "--greedy")
    said = " ".join(result.output.split())
    assert result.exit_code == 0 and "was never fine-tuned to chat" in said and "llmkit finetune --template chat" in said, said
    chat = make_checkpoint(tmp_path / "chat", shakespeare[:20000], task={"task": "sft", "template": {"type": "chat"}})
    quiet = cli("generate", chat, "--prompts", talk, "-n", "2", "--greedy")
    assert quiet.exit_code == 0 and "never fine-tuned" not in quiet.output, quiet.output


def test_first_index_remakes_one_record_of_a_prompts_run(cli, tmp_path, shakespeare):
    """A sampled record of a --prompts run was drawn from a seed of its place in the file: it could be
    remade only by the whole file again."""
    ckpt = make_checkpoint(tmp_path / "base", shakespeare[:20000])
    prompts = tmp_path / "p.txt"
    prompts.write_text("To be\nThe king\nO Romeo\n", encoding="utf-8")
    sampled = ["-n", "12", "--temperature", "1.0", "--seed", "3", "-s", "2"]
    assert cli("generate", ckpt, "--prompts", prompts, *sampled, "-o", tmp_path / "all.jsonl").exit_code == 0
    records = [json.loads(line) for line in (tmp_path / "all.jsonl").read_text().splitlines()]
    one = cli("generate", ckpt, "-p", "The king", *sampled, "--first-index", "1", "-o", tmp_path / "one.jsonl")
    assert one.exit_code == 0, one.output
    again = [json.loads(line) for line in (tmp_path / "one.jsonl").read_text().splitlines()]
    assert [(r["prompt_index"], r["sample_index"], r["completion"]) for r in again] == [
        (r["prompt_index"], r["sample_index"], r["completion"]) for r in records if r["prompt_index"] == 1]
    printed = cli("generate", ckpt, "-p", "The king", *sampled[:-2], "--first-index", "1")  # (streamed: one completion)
    assert printed.exit_code == 0 and printed.stdout == f"The king{records[2]['completion']}\n", printed.output


def test_a_replayed_transcripts_messages_are_shown_stripped():
    """A chat transcript keeps each reply as the model wrote it; shown again by generate, the whitespace
    around it printed a blank line and a leading space where chat's screen had none."""
    from llmkit.inference.prompts import Prompt

    shown = Prompt(messages=[{"role": "user", "content": "hi"}, {"role": "assistant", "content": "  positive\n"}]).display
    assert shown == "user: hi\nassistant: positive"
    code = Prompt(messages=[{"role": "user", "content": "\n    def f():\n        return 1\n"}]).display
    assert code == "user:     def f():\n        return 1"  # (several lines: the first keeps its indentation)


def test_token_logprobs_equal_transformers_raw_scores_and_a_full_forward():
    """--logprobs: each token's log-probability, and each step's likeliest, are the model's own
    (transformers' output_logits, log-softmaxed), not the draw's after temperature or top-k."""
    config = ModelConfig(vocab_size=97, context_length=48, n_layer=2, n_head=4, n_kv_head=2, n_embd=32)
    model, hf = _twin_models(config, seed=0)
    rows = generate_ids(model, PROMPTS, GenerationParams(max_new_tokens=12, stop_at_eos=False), pad_id=0, logprobs=5)
    ids, mask, width = _left_padded(PROMPTS)
    with torch.no_grad():
        out = hf.generate(input_ids=ids, attention_mask=mask, max_new_tokens=12, min_new_tokens=12, do_sample=False,
                          pad_token_id=0, eos_token_id=None, output_logits=True, return_dict_in_generate=True)
    theirs = torch.stack(out.logits, dim=1).float().log_softmax(dim=-1)  # [B, steps, V]
    for b, row in enumerate(rows):
        assert row.token_ids == out.sequences[b, width:].tolist()
        chosen = theirs[b].gather(1, torch.tensor(row.token_ids)[:, None]).squeeze(1)
        assert torch.allclose(torch.tensor(row.logprobs), chosen, atol=1e-5)
        for step, top in enumerate(row.top_logprobs):
            values, indices = theirs[b, step].topk(5)
            assert [i for i, _ in top] == indices.tolist() and len(top) == 5
            assert torch.allclose(torch.tensor([v for _, v in top]), values, atol=1e-5)
            assert top[0][0] == row.token_ids[step]  # greedy: the likeliest
    # sampled at a temperature, through top-k and a repetition penalty: the tokens drawn, scored by the model alone
    params = GenerationParams(max_new_tokens=10, temperature=1.7, top_k=20, repetition_penalty=1.3, stop_at_eos=False, seed=3)
    for row, prompt in zip(generate_ids(model, PROMPTS, params, pad_id=0, logprobs=0), PROMPTS):
        with torch.no_grad():
            logits, _ = model(torch.tensor([prompt + row.token_ids]))
        full = logits[0, len(prompt) - 1 : -1].float().log_softmax(dim=-1)
        assert torch.allclose(torch.tensor(row.logprobs), full.gather(1, torch.tensor(row.token_ids)[:, None]).squeeze(1), atol=1e-5)
        assert row.top_logprobs == [[]] * len(row.token_ids)
    assert generate_ids(model, PROMPTS, params, pad_id=0)[0].logprobs is None  # (not asked for: none kept)


def test_cli_logprobs_in_the_records(cli, ckpt, tmp_path):
    out = tmp_path / "lp.jsonl"
    made = cli("generate", ckpt, "-p", "KING:", "-p", "To be", "-n", "16", "--seed", "2", "--stop", "e", "--logprobs", "3",
               "-o", out)
    assert made.exit_code == 0, made.output
    plain = cli("generate", ckpt, "-p", "KING:", "-p", "To be", "-n", "16", "--seed", "2", "--stop", "e", "-o", tmp_path / "p.jsonl")
    assert plain.exit_code == 0, plain.output
    records = [json.loads(line) for line in out.read_text().splitlines()]
    without = [json.loads(line) for line in (tmp_path / "p.jsonl").read_text().splitlines()]
    assert [r["completion"] for r in records] == [r["completion"] for r in without]  # the same text, scored
    assert "logprobs" not in without[0]
    for record in records:
        tokens = record["logprobs"]
        assert len(tokens) == record["completion_tokens"] > 0  # (cut at the stop string with the completion's tokens)
        assert bytes(b for t in tokens for b in t["bytes"]).decode("utf-8", "replace").startswith(record["completion"])
        for t in tokens:
            assert t["logprob"] <= 0 and len(t["top_logprobs"]) == 3
            ranked = [alt["logprob"] for alt in t["top_logprobs"]]
            assert ranked == sorted(ranked, reverse=True) and (t["id"] not in [a["id"] for a in t["top_logprobs"]]
                                                              or t["logprob"] in ranked)
            assert t["logprob"] <= ranked[0] + 1e-6
    refused = cli("generate", ckpt, "-p", "KING:", "--logprobs", "2")
    assert refused.exit_code == 2 and "-o FILE.jsonl" in refused.output and "Traceback" not in refused.output
    too_many = cli("generate", ckpt, "-p", "KING:", "--logprobs", "21", "-o", tmp_path / "x.jsonl")
    assert too_many.exit_code != 0 and "--logprobs" in too_many.output and not (tmp_path / "x.jsonl").exists()


def test_beam_search_equals_transformers_generate_with_num_beams():
    """--num-beams: transformers' beam search (early_stopping False, its length-penalty heuristic), left-padded
    batches, an end token that finishes beams at different lengths, min_new_tokens, negative and positive
    length penalties, and the repetition penalty on log-probabilities, as its beam search applies it."""
    from llmkit.inference.beam import beam_search_ids

    config = ModelConfig(vocab_size=97, context_length=48, n_layer=2, n_head=4, n_kv_head=2, n_embd=32)
    ids, mask, width = _left_padded(PROMPTS)
    ended = 0
    for seed in range(3):
        model, hf = _twin_models(config, seed)
        greedy = [r.token_ids for r in generate_ids(model, PROMPTS, GenerationParams(max_new_tokens=12, stop_at_eos=False), pad_id=0)]
        for beams, penalty, k, least in ((2, 1.0, 3, 0), (4, 1.0, 5, 3), (3, 0.5, 1, 0), (5, 2.0, 7, 0), (3, -1.0, 4, 2)):
            end = greedy[seed][k]  # (a token the model picks: some beams end on it early)
            params = GenerationParams(max_new_tokens=12, min_new_tokens=least, num_beams=beams, length_penalty=penalty)
            found = beam_search_ids(model, PROMPTS, params, pad_id=0, eos_ids=[end])
            with torch.no_grad():
                out = hf.generate(input_ids=ids, attention_mask=mask, max_new_tokens=12, min_new_tokens=least, num_beams=beams,
                                  do_sample=False, length_penalty=penalty, early_stopping=False, pad_token_id=0, eos_token_id=end)
            theirs = [row[: row.index(end)] if end in row else row for row in out[:, width:].tolist()]
            assert [r.token_ids for r in found] == theirs, (seed, beams, penalty, end)
            ended += sum(r.finish_reason == "eos" for r in found)
        for prompt in PROMPTS:  # the repetition penalty (one prompt at a time: transformers penalises its padding too)
            ours = beam_search_ids(model, [prompt], GenerationParams(max_new_tokens=10, num_beams=3, repetition_penalty=1.5), pad_id=0)
            with torch.no_grad():
                out = hf.generate(input_ids=torch.tensor([prompt]), max_new_tokens=10, num_beams=3, do_sample=False,
                                  repetition_penalty=1.5, pad_token_id=0, eos_token_id=None)
            assert ours[0].token_ids == out[0, len(prompt):].tolist()
    assert ended >= 3  # (the end token finished some searches early)


def _plain_beam_search(model, prompt: list[int], beams: int, steps: int, penalty: float = 1.0) -> list[int]:
    """Beam search written out, each step a whole forward pass over each beam (no cache): the likeliest of
    the beams after `steps` tokens (no end token: every beam runs to the end). `penalty`: the repetition
    penalty on the logits, before the log-softmax (an ensemble member's, as generate applies it)."""
    from llmkit.inference.sampling import apply_repetition_penalty

    alive = [(0.0, [])]
    for _ in range(steps):
        scored = []
        for total, tokens in alive:
            with torch.no_grad():
                logits, _ = model(torch.tensor([prompt + tokens]))
            logits = logits[0, -1].float()
            if penalty != 1.0:
                seen = torch.zeros_like(logits, dtype=torch.bool)
                seen[torch.tensor(prompt + tokens)] = True
                logits = apply_repetition_penalty(logits, seen, penalty)
            log_probs = logits.log_softmax(dim=-1)
            scored += [(total + float(value), tokens + [int(token)]) for value, token in zip(*log_probs.topk(beams))]
        alive = sorted(scored, key=lambda item: -item[0])[:beams]
    return alive[0][1]


@pytest.mark.parametrize("name,model", MODELS, ids=[n for n, _ in MODELS])
def test_beam_search_reorders_each_models_cache_as_recomputing_would(name, model):
    from llmkit.inference.beam import beam_search_ids
    from llmkit.model.ensemble import Ensemble

    torch.manual_seed(1)
    model = copy.deepcopy(model).eval()
    for prompt in PROMPTS:
        found = beam_search_ids(model, [prompt] + PROMPTS, GenerationParams(max_new_tokens=6, num_beams=4), pad_id=0)[0]
        assert found.token_ids == _plain_beam_search(model, prompt, 4, 6) and found.finish_reason == "length"
    pair = Ensemble([model, copy.deepcopy(model)], [0.5, 0.5], mode="prob")  # (a member twice: the model's distribution)
    assert [r.token_ids for r in beam_search_ids(pair, PROMPTS, GenerationParams(max_new_tokens=6, num_beams=3), pad_id=0)] == \
        [r.token_ids for r in beam_search_ids(model, PROMPTS, GenerationParams(max_new_tokens=6, num_beams=3), pad_id=0)]
    # an ensemble's repetition penalty acts on each member's logits, as generate's (a review: it acted on the mixture)
    penalised = beam_search_ids(pair, PROMPTS, GenerationParams(max_new_tokens=6, num_beams=3, repetition_penalty=1.5), pad_id=0)
    assert [r.token_ids for r in penalised] == [_plain_beam_search(model, p, 3, 6, penalty=1.5) for p in PROMPTS]


def test_cli_beam_search_records_and_refusals(cli, ckpt, tmp_path):
    from llmkit.inference.beam import beam_search_ids
    from llmkit.model.io import load_checkpoint

    out = tmp_path / "beams.jsonl"
    made = cli("generate", ckpt, "-p", "KING:", "-p", "To be", "-n", "10", "--num-beams", "3", "--length-penalty", "0.5", "-o", out)
    assert made.exit_code == 0, made.output
    records = [json.loads(line) for line in out.read_text().splitlines()]
    assert [(r["num_beams"], r["length_penalty"]) for r in records] == [(3, 0.5)] * 2
    loaded = load_checkpoint(ckpt)
    generator = Generator.for_checkpoint(loaded)
    [first] = beam_search_ids(loaded.model, [generator.encode_prompt("KING:")],
                              GenerationParams(max_new_tokens=10, num_beams=3, length_penalty=0.5), pad_id=loaded.tokenizer.pad_id,
                              eos_ids=loaded.tokenizer.end_ids, vocab_size=loaded.tokenizer.vocab_size)
    assert records[0]["completion_tokens"] == len(first.token_ids) and records[0]["finish_reason"] == first.finish_reason
    # printed (not streamed: the best beam is known at the end), the same text as the record
    shown = cli("generate", ckpt, "-p", "KING:", "-n", "10", "--num-beams", "3", "--length-penalty", "0.5")
    assert shown.exit_code == 0 and records[0]["completion"] in shown.output
    for flags, said in ((["--num-beams", "3", "--temperature", "0.5"], "draws nothing, so --temperature would change nothing"),
                        (["--num-beams", "3", "--num-samples", "2"], "--num-samples would change nothing"),
                        (["--length-penalty", "2"], "--length-penalty scores the beams of --num-beams"),
                        (["--num-beams", "0"], "--num-beams")):
        refused = cli("generate", ckpt, "-p", "KING:", "-n", "4", *flags)
        assert refused.exit_code == 2 and said in " ".join(refused.output.split()), (flags, refused.output)
    # a prompt and reply past the context: refused before any batch is made (it was said mid-run, after a note of a
    # sliding window, a review)
    refused = cli("generate", ckpt, "-p", "KING:", "-n", "100", "--num-beams", "3", "-o", tmp_path / "long.jsonl")
    assert refused.exit_code == 1 and "beam search keeps the prompt and --max-new-tokens within the context" in refused.output
    assert "sliding window" not in refused.output and not list(tmp_path.glob("long.jsonl*"))
    # eval: beams for generated metrics, recorded only where on (an eval without them keeps its fingerprint)
    (tmp_path / "mt.jsonl").write_text("".join(json.dumps({"source": s, "target": t}) + "\n"
                                               for s, t in (("KING:", "long live"), ("To be", "or not"))))
    common = ["eval", ckpt, "-m", "chrf", "--data", tmp_path / "mt.jsonl", "-n", "8"]
    assert cli(*common, "-o", tmp_path / "greedy").exit_code == 0
    assert cli(*common, "--num-beams", "3", "-o", tmp_path / "beam").exit_code == 0
    greedy, beam = artifacts.load(tmp_path / "greedy"), artifacts.load(tmp_path / "beam")
    assert "num_beams" not in greedy.config and beam.config["num_beams"] == 3 and greedy.fingerprint != beam.fingerprint
    refused = cli("eval", ckpt, "-m", "chrf", "--data", tmp_path / "mt.jsonl", "--num-beams", "3", "--compile", "-o", tmp_path / "x")
    assert refused.exit_code == 2 and "--num-beams 3 with --compile is not built" in refused.output


def test_beam_search_stops_at_a_stop_string_as_transformers_stop_strings(cli, ckpt, tmp_path):
    """--num-beams with --stop: a continuation whose text holds the stop string ends there (transformers'
    StopStringCriteria ends a beam so); the text is cut before it. Stop strings the prompt's end could begin are
    left out of the comparison: transformers matches one across the prompt's end, llmkit in the completion alone."""
    from transformers import AutoModelForCausalLM, AutoTokenizer

    from llmkit.model.io import load_checkpoint

    assert cli("export", ckpt, "-o", tmp_path / "hf").exit_code == 0
    hf = AutoModelForCausalLM.from_pretrained(tmp_path / "hf", local_files_only=True).eval()
    tok = AutoTokenizer.from_pretrained(tmp_path / "hf", local_files_only=True)
    generator = Generator.for_checkpoint(load_checkpoint(ckpt))
    prompts = ["KING:", "To be", "First Citizen:\nBefore we proceed", "O Romeo", "My lord"]
    compared = stopped = 0
    for beams in (2, 3, 4):
        free = generator.complete(prompts, GenerationParams(max_new_tokens=12, num_beams=beams))
        for prompt, unstopped in zip(prompts, free):
            ids = tok(prompt, return_tensors="pt")["input_ids"]
            for stop in {unstopped.text[1:3], unstopped.text[3:5], unstopped.text[6:7], unstopped.text[8:10]}:
                if not stop.isprintable() or "\ufffd" in stop or any(prompt.endswith(stop[:i]) for i in range(1, len(stop) + 1)):
                    continue
                [ours] = generator.complete([prompt], GenerationParams(max_new_tokens=12, num_beams=beams, stop=[stop]))
                with torch.no_grad():
                    out = hf.generate(ids, max_new_tokens=12, num_beams=beams, do_sample=False, stop_strings=[stop], tokenizer=tok,
                                      early_stopping=False, pad_token_id=tok.pad_token_id)
                text = tok.decode(out[0, ids.shape[1]:])
                theirs = text[: text.find(stop)] if stop in text else text
                # (a character cut by the length: llmkit leaves out its first bytes, transformers writes U+FFFD)
                assert ours.text.rstrip("\ufffd") == theirs.rstrip("\ufffd"), (beams, prompt, stop)
                compared, stopped = compared + 1, stopped + (ours.finish_reason == "stop")
    assert compared >= 20 and stopped >= 2  # (a stopped beam often scores below one that runs on: it ends "length")
    # --logprobs with beams: the model's own, of the answer found (transformers' logits over prompt and answer)
    made = cli("generate", ckpt, "-p", "To be", "-n", "8", "--num-beams", "3", "--logprobs", "2", "-o", tmp_path / "lp.jsonl")
    assert made.exit_code == 0, made.output
    record = json.loads((tmp_path / "lp.jsonl").read_text())
    answer = [t["id"] for t in record["logprobs"]]
    assert len(answer) == record["completion_tokens"] > 0
    ids = tok("To be", return_tensors="pt")["input_ids"][0].tolist()
    with torch.no_grad():
        theirs = hf(torch.tensor([ids + answer])).logits[0, len(ids) - 1 : -1].float().log_softmax(dim=-1)
    assert [t["logprob"] for t in record["logprobs"]] == pytest.approx(theirs.gather(1, torch.tensor(answer)[:, None]).squeeze(1).tolist(),
                                                                     abs=1e-4)
    assert [[a["id"] for a in t["top_logprobs"]] for t in record["logprobs"]] == theirs.topk(2).indices.tolist()
