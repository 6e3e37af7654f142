"""Generation speed: llmkit's engine vs transformers `generate()` on the same weights and settings.

    .venv/bin/python benchmarks/generate.py                      # GPT-2-shaped model, CPU
    .venv/bin/python benchmarks/generate.py --family llama       # Llama-shaped (RoPE, SwiGLU, GQA)
    .venv/bin/python benchmarks/generate.py --device cuda        # where a GPU is available
    .venv/bin/python benchmarks/generate.py --checkpoint runs/quickstart/pretrain

One process builds (or loads) an llmkit GPT, copies its weights into the matching transformers
class (`llmkit.model.hf_weights`), and times greedy generation of --new-tokens tokens after prompts of
--prompt-len tokens at batch 1 and batch 8 (left-padded, prompts of different lengths) on both
sides, after a warm-up. The sides alternate over --repeats rounds, each going first in every
other round (benchmarks/paired.py), so load from other processes hits both alike; printed:
tokens/s = rows x new tokens / seconds (best round), tokens per CPU-second (all threads, best
round) per side, and the median over rounds of each round's
llmkit / transformers ratio, of wall time and of CPU time (all threads). EOS is ignored on both
sides so every row generates the same number of tokens: both do the same work. The greedy tokens
must agree: a row may differ only late, where float rounding flips a near-tie (the run fails if a
row differs within its first 8 tokens, or fewer than half the rows agree throughout).

--compile runs llmkit's decode step compiled (`llmkit generate --compile`); --hf-compile gives
transformers its own compiled path (a static cache, which its `generate()` compiles once a
CompileConfig allows the device), so compiled can be set against compiled. Compilation happens in
the warm-up and its time is printed, not counted in tokens/s.

--num-beams N times beam search instead (`llmkit generate --num-beams N` against `generate(num_beams=N,
early_stopping=False)`): an end token (id 1) held off until the last token on both sides, so every
row's beams run --new-tokens long; the answers must agree as greedy ones must.
"""

from __future__ import annotations

import argparse
import platform
import sys
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
sys.path.insert(0, str(Path(__file__).resolve().parent.parent))  # llmkit itself, where it is not installed (the GPU machine)
from paired import alternate, median  # noqa: E402

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


# --num-beams: the end token both sides hold off until the last token (transformers' beam search wants one)
BEAM_END = 1


def run_llmkit(model, prompts, new_tokens, decoder=None, beams: int = 1):
    if beams > 1:
        from llmkit.inference.beam import beam_search_ids

        params = GenerationParams(max_new_tokens=new_tokens, min_new_tokens=new_tokens, num_beams=beams)
        return [r.token_ids for r in beam_search_ids(model, prompts, params, pad_id=0, eos_ids=[BEAM_END])]
    params = GenerationParams(max_new_tokens=new_tokens, stop_at_eos=False)
    return [r.token_ids for r in generate_ids(model, prompts, params, pad_id=0, decoder=decoder)]


def run_hf(hf, prompts, new_tokens, device, compiled=False, beams: int = 1):
    width = max(len(p) for p in prompts)
    ids = torch.zeros(len(prompts), width, dtype=torch.long)
    mask = torch.zeros(len(prompts), width, dtype=torch.long)
    for b, p in enumerate(prompts):
        ids[b, width - len(p) :] = torch.tensor(p)
        mask[b, width - len(p) :] = 1
    with torch.inference_mode():
        searched = dict(num_beams=beams, early_stopping=False, eos_token_id=BEAM_END) if beams > 1 else dict(eos_token_id=None)
        out = hf.generate(
            input_ids=ids.to(device), attention_mask=mask.to(device), max_new_tokens=new_tokens, min_new_tokens=new_tokens,
            do_sample=False, pad_token_id=0, use_cache=True, **searched, **hf_compile_kwargs(compiled),
        )
    return [[t for t in row if t != BEAM_END] if beams > 1 else row for row in out[:, width:].tolist()]


def hf_compile_kwargs(compiled: bool) -> dict:
    if not compiled:
        return {}
    from transformers import CompileConfig

    config = CompileConfig()
    config._compile_all_devices = True  # transformers compiles only on accelerators unless told
    return dict(cache_implementation="static", compile_config=config)


def synchronized(fn, device):
    """fn, its GPU work finished before it returns (so the time taken counts all of it)."""
    def run(_round):
        result = fn()
        if device.startswith("cuda"):
            torch.cuda.synchronize()
        return result
    return run


def agreement(ours: list[list[int]], theirs: list[list[int]]) -> tuple[int, int]:
    """(rows whose tokens agree throughout, the shortest run of equal leading tokens of any row)."""
    def prefix(a, b):
        return next((i for i, (x, y) in enumerate(zip(a, b)) if x != y), min(len(a), len(b)))
    return sum(a == b for a, b in zip(ours, theirs)), min(prefix(a, b) for a, b in zip(ours, theirs))


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
    parser.add_argument("--num-beams", type=int, default=1, help="Beam search with this many beams (1: greedy).")
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
    if args.num_beams > 1 and (args.compile or args.hf_compile):
        sys.exit("--num-beams times the eager engines: leave out --compile and --hf-compile")
    search = f"beam search ({args.num_beams} beams)" if args.num_beams > 1 else "greedy"
    print(f"{search}, prompt ~{args.prompt_len} tokens, {args.new_tokens} new tokens, {args.repeats} alternating rounds; "
          f"llmkit {'compiled' if args.compile else 'eager'}, transformers {'compiled (static cache)' if args.hf_compile else 'eager'}\n")
    decoder = None
    if args.compile:
        from llmkit.inference.compiled import CompiledDecoder

        decoder = CompiledDecoder(model)
    print(f"{'batch':>5}  {'llmkit tok/s':>13}  {'transformers tok/s':>19}  {'llmkit tok/CPU-s':>16}  "
          f"{'transformers tok/CPU-s':>22}  {'wall ratio':>10}  {'CPU ratio':>9}  same tokens")
    failures = []
    for batch in (int(b) for b in args.batches.split(",")):
        prompts = prompts_for(batch, args.prompt_len, c.vocab_size)
        warm = []
        # the timed shapes themselves (the cache length follows the new tokens): compiled graphs are ready before timing
        for warm_up in (lambda: run_llmkit(model, prompts, args.new_tokens, decoder, args.num_beams),
                        lambda: run_hf(hf, prompts, args.new_tokens, args.device, args.hf_compile, args.num_beams)):
            start = time.perf_counter()
            warm_up()  # kernels, allocator, compilation
            warm.append(time.perf_counter() - start)
        if args.compile or args.hf_compile:
            print(f"(warm-up incl. compilation: llmkit {warm[0]:.1f} s, transformers {warm[1]:.1f} s)")
        runs = alternate({"llmkit": synchronized(lambda: run_llmkit(model, prompts, args.new_tokens, decoder, args.num_beams),
                                                 args.device),
                          "transformers": synchronized(lambda: run_hf(hf, prompts, args.new_tokens, args.device, args.hf_compile,
                                                                      args.num_beams), args.device)}, args.repeats)
        ours, theirs = runs["llmkit"], runs["transformers"]
        tokens = batch * args.new_tokens
        wall = median([t.wall / o.wall for o, t in zip(ours, theirs)])
        cpu = median([t.cpu / o.cpu for o, t in zip(ours, theirs)])
        # float reordering may flip a near-tie argmax late in a sequence: reported; an early difference is a bug
        agree, shortest = agreement(ours[-1].result, theirs[-1].result)
        print(f"{batch:>5}  {tokens / min(t.wall for t in ours):>13.1f}  {tokens / min(t.wall for t in theirs):>19.1f}  "
              f"{tokens / min(t.cpu for t in ours):>16.1f}  {tokens / min(t.cpu for t in theirs):>22.1f}  "
              f"{wall:>9.2f}x  {cpu:>8.2f}x  {agree}/{batch} rows (all rows equal for the first {shortest} tokens)")
        if shortest < min(8, args.new_tokens) or 2 * agree < batch:
            failures.append(f"batch {batch}: the two sides generated other tokens ({agree}/{batch} rows equal, "
                            f"a row differs from token {shortest})")
    print("\nratios: llmkit / transformers, paired median over rounds (wall: tokens/s; CPU: tokens per CPU-second)")
    if failures:
        sys.exit("\n".join(failures))


if __name__ == "__main__":
    main()
