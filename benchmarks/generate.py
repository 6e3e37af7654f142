"""Generation speed: llmkit's engine vs transformers `generate()` on the same weights and settings.

    .venv/bin/python benchmarks/generate.py                      # GPT-2-shaped model, CPU
    .venv/bin/python benchmarks/generate.py --family llama       # Llama-shaped (RoPE, SwiGLU, GQA)
    .venv/bin/python benchmarks/generate.py --device cuda        # where a GPU is available
    .venv/bin/python benchmarks/generate.py --checkpoint runs/quickstart/model

One process builds (or loads) an llmkit GPT, copies its weights into the matching transformers
class (`llmkit.model.hf_weights`), and times greedy generation of --new-tokens tokens after prompts of
--prompt-len tokens at batch 1 and batch 8 (left-padded, prompts of different lengths) on both
sides: tokens/s = rows x new tokens / seconds, best of --repeats (the two sides alternate, so
load from other processes hits both alike) after a warm-up. EOS is
ignored on both sides so every row generates the same number of tokens, and the greedy tokens
are checked to be identical, so both sides do the same work. The ratio is llmkit / transformers.

--compile runs llmkit's decode step compiled (`llmkit generate --compile`); --hf-compile gives
transformers its own compiled path (a static cache, which its `generate()` compiles once a
CompileConfig allows the device), so compiled can be set against compiled. Compilation happens in
the warm-up and its time is printed, not counted in tokens/s.
"""

from __future__ import annotations

import argparse
import platform
import time

import torch

from llmkit.inference.engine import GenerationParams, generate_ids, prepare_for_decoding
from llmkit.model.gpt import GPT, ModelConfig
from llmkit.model.hf_config import to_hf_config
from llmkit.model.hf_weights import to_hf_state
from llmkit.model.presets import PRESETS


def shaped_model(preset_name: str, family: str, vocab_size: int, **overrides) -> GPT:
    """A random llmkit GPT of a preset, in the GPT-2 or Llama family, seeded (0) as every benchmark takes it."""
    preset = dict(PRESETS[preset_name], **overrides)
    if family == "gpt2":
        # GPT-2 has no grouped-query attention: give both sides the same full set of KV heads
        preset.update(norm="layernorm", pos="learned", activation="gelu", bias=True, n_kv_head=preset["n_head"])
    else:
        preset.update(norm="rmsnorm", pos="rope", activation="swiglu", bias=False)
    torch.manual_seed(0)
    return GPT(ModelConfig(vocab_size=vocab_size, **preset))


def transformers_copy(model):
    """The matching transformers model with `model`'s weights (llmkit.model.hf_weights), in eval mode."""
    from transformers import AutoModelForCausalLM

    hf_config = to_hf_config(model.config)
    hf_config.pad_token_id = 0
    hf = AutoModelForCausalLM.from_config(hf_config, attn_implementation="sdpa")
    missing, unexpected = hf.load_state_dict(to_hf_state(model.state_dict(), model.config), strict=False)
    assert not unexpected and set(missing) <= {"lm_head.weight"}, (missing, unexpected)
    hf.tie_weights()
    return hf.eval()


def build_models(args):
    if args.checkpoint:
        from llmkit.model.io import load_checkpoint

        model = load_checkpoint(args.checkpoint, device=args.device).model
    else:
        model = shaped_model(args.preset, args.family, args.vocab).to(args.device)
    model.eval()
    hf = transformers_copy(model)
    if not (args.row_major or args.compile):
        prepare_for_decoding(model)  # what llmkit's Generator does without --compile (generate, chat, eval)
    return model, hf.to(args.device)


def prompts_for(batch: int, length: int, vocab: int) -> list[list[int]]:
    g = torch.Generator().manual_seed(batch)
    # different lengths in a batch, so both sides pay for left padding
    lengths = [length - (3 * i) % max(1, length // 2) for i in range(batch)]
    return [torch.randint(10, vocab, (n,), generator=g).tolist() for n in lengths]


def run_llmkit(model, prompts, new_tokens, decoder=None):
    params = GenerationParams(max_new_tokens=new_tokens, stop_at_eos=False)
    return [r.token_ids for r in generate_ids(model, prompts, params, pad_id=0, decoder=decoder)]


def run_hf(hf, prompts, new_tokens, device, compiled=False):
    width = max(len(p) for p in prompts)
    ids = torch.zeros(len(prompts), width, dtype=torch.long)
    mask = torch.zeros(len(prompts), width, dtype=torch.long)
    for b, p in enumerate(prompts):
        ids[b, width - len(p) :] = torch.tensor(p)
        mask[b, width - len(p) :] = 1
    with torch.inference_mode():
        out = hf.generate(
            input_ids=ids.to(device), attention_mask=mask.to(device), max_new_tokens=new_tokens, min_new_tokens=new_tokens,
            do_sample=False, pad_token_id=0, eos_token_id=None, use_cache=True, **hf_compile_kwargs(compiled),
        )
    return out[:, width:].tolist()


def hf_compile_kwargs(compiled: bool) -> dict:
    if not compiled:
        return {}
    from transformers import CompileConfig

    config = CompileConfig()
    config._compile_all_devices = True  # transformers compiles only on accelerators unless told
    return dict(cache_implementation="static", compile_config=config)


def timed_pair(ours, theirs, repeats, device):
    """Best time of each side; the two alternate so a busy machine slows both alike."""
    best = [float("inf"), float("inf")]
    results = [None, None]
    for _ in range(repeats):
        for side, fn in enumerate((ours, theirs)):
            if device.startswith("cuda"):
                torch.cuda.synchronize()
            start = time.perf_counter()
            results[side] = fn()
            if device.startswith("cuda"):
                torch.cuda.synchronize()
            best[side] = min(best[side], time.perf_counter() - start)
    return best, results


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--family", choices=("gpt2", "llama"), default="gpt2")
    parser.add_argument("--preset", default="mini", choices=sorted(PRESETS))
    parser.add_argument("--vocab", type=int, default=8192)
    parser.add_argument("--checkpoint", help="Use this checkpoint's weights instead of a random model.")
    parser.add_argument("--prompt-len", type=int, default=32)
    parser.add_argument("--new-tokens", type=int, default=128)
    parser.add_argument("--batches", default="1,8")
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--compile", action="store_true", help="llmkit's decode step compiled (llmkit generate --compile).")
    parser.add_argument("--row-major", action="store_true", help="keep llmkit's weights row-major (before 2026-12-01).")
    parser.add_argument("--hf-compile", action="store_true", help="transformers with a static cache, compiled.")
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    model, hf = build_models(args)
    import transformers

    c = model.config
    print(
        f"model: {c.n_layer} layers, {c.n_embd} wide, {c.n_head} heads ({c.n_kv_head} kv), vocab {c.vocab_size}, "
        f"{sum(p.numel() for p in model.parameters()) / 1e6:.1f}M params, {c.norm}/{c.pos}/{c.activation}"
    )
    print(
        f"device {args.device}, threads {args.threads}, torch {torch.__version__}, transformers {transformers.__version__}, "
        f"{platform.processor() or platform.machine()}"
    )
    print(f"greedy, prompt ~{args.prompt_len} tokens, {args.new_tokens} new tokens, best of {args.repeats}; "
          f"llmkit {'compiled' if args.compile else 'eager'}, transformers {'compiled (static cache)' if args.hf_compile else 'eager'}\n")
    decoder = None
    if args.compile:
        from llmkit.inference.compiled import CompiledDecoder

        decoder = CompiledDecoder(model)
    print(f"{'batch':>5}  {'llmkit tok/s':>13}  {'transformers tok/s':>19}  {'ratio':>6}  same tokens")
    for batch in (int(b) for b in args.batches.split(",")):
        prompts = prompts_for(batch, args.prompt_len, c.vocab_size)
        warm = []
        # the timed shapes themselves (the cache length follows the new tokens): compiled graphs are ready before timing
        for warm_up in (lambda: run_llmkit(model, prompts, args.new_tokens, decoder),
                        lambda: run_hf(hf, prompts, args.new_tokens, args.device, args.hf_compile)):
            start = time.perf_counter()
            warm_up()  # kernels, allocator, compilation
            warm.append(time.perf_counter() - start)
        if args.compile or args.hf_compile:
            print(f"(warm-up incl. compilation: llmkit {warm[0]:.1f} s, transformers {warm[1]:.1f} s)")
        (t_ours, t_hf), (ours, theirs) = timed_pair(
            lambda: run_llmkit(model, prompts, args.new_tokens, decoder),
            lambda: run_hf(hf, prompts, args.new_tokens, args.device, args.hf_compile),
            args.repeats,
            args.device,
        )
        rate_ours = batch * args.new_tokens / t_ours
        rate_hf = batch * args.new_tokens / t_hf
        # float reordering may flip a near-tie argmax late in a sequence; report agreement, do not hide it
        agree = sum(a == b for a, b in zip(ours, theirs))
        print(f"{batch:>5}  {rate_ours:>13.1f}  {rate_hf:>19.1f}  {rate_ours / rate_hf:>5.2f}x  {agree}/{batch} rows")


if __name__ == "__main__":
    main()
