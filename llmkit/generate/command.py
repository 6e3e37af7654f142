"""`llmkit generate`: options in, text out (`llmkit chat` lives in chat.py and shares the engine).

Heavy imports (torch) happen inside the functions so `llmkit --help` stays fast.
"""

from __future__ import annotations

from pathlib import Path
from typing import Annotated, Optional

import typer



def generate(
    ctx: typer.Context,
    checkpoint: Annotated[Path, typer.Argument(help="Checkpoint artifact (llmkit pretrain / finetune / import).")],
    prompt: Annotated[list[str], typer.Option("--prompt", "-p", help="Prompt text; repeat for several (batched). \\n is a newline.")] = [],  # noqa: B006
    prompts_file: Annotated[Optional[Path], typer.Option("--prompts", help="File of prompts: .txt (one per line) or .jsonl ({\"prompt\": ...} or {\"messages\": [...]}).")] = None,
    max_new_tokens: Annotated[int, typer.Option("--max-new-tokens", "-n", help="Tokens to generate per completion.")] = 128,
    temperature: Annotated[float, typer.Option("--temperature", "-t", help="Sampling temperature; 0 = greedy.")] = 0.8,
    greedy: Annotated[bool, typer.Option("--greedy", help="Always take the most likely token (same as --temperature 0).")] = False,
    top_k: Annotated[Optional[int], typer.Option("--top-k", help="Sample only among the k most likely tokens.")] = None,
    top_p: Annotated[Optional[float], typer.Option("--top-p", help="Nucleus sampling: the smallest set of tokens with this much probability.")] = None,
    repetition_penalty: Annotated[float, typer.Option("--repetition-penalty", help="> 1 discourages repeating tokens (1 = off).")] = 1.0,
    stop: Annotated[list[str], typer.Option("--stop", help="Stop when this string appears (repeatable; \\n is a newline); it is not printed.")] = [],  # noqa: B006
    ignore_eos: Annotated[bool, typer.Option("--ignore-eos", help="Keep going past the end-of-text token.")] = False,
    num_samples: Annotated[int, typer.Option("--num-samples", "-s", help="Completions per prompt.")] = 1,
    batch_size: Annotated[int, typer.Option("--batch-size", help="Rows generated together (left-padded).")] = 8,
    context_overflow: Annotated[str, typer.Option("--context-overflow", help="When prompt + output exceed the context: slide (keep the newest tokens) or error.")] = "slide",
    output: Annotated[Optional[Path], typer.Option("--output", "-o", help="Write one JSON record per completion to this .jsonl file.")] = None,
    stream: Annotated[Optional[bool], typer.Option("--stream/--no-stream", help="Print tokens as they arrive (default: when there is one completion).")] = None,
    device: Annotated[str, typer.Option("--device", help="cpu, cuda, mps or auto.")] = "auto",
    config: Annotated[Optional[Path], typer.Option("--config", help="TOML/YAML file with generate options.")] = None,
    seed: Annotated[int, typer.Option("--seed", help="Seed: the same seed gives the same text.")] = 0,
    force: Annotated[bool, typer.Option("--force", help="Replace an existing --output file.")] = False,
) -> None:
    """Generate text from a checkpoint: sampling or greedy, batched, streamed, KV-cached."""
    from llmkit import config as config_mod
    from llmkit.console import err, out
    from llmkit.generate.stage import GenerateConfig, check_output_file, load_prompts, run_generate, write_jsonl

    explicit = config_mod.explicit_params(ctx)
    explicit = {{"prompt": "prompts"}.get(k, k): v for k, v in explicit.items()}
    from llmkit.generate.prompts import unescape

    for key in ("prompts", "stop"):  # a shell passes "\n" literally: read it as a newline
        if key in explicit:
            explicit[key] = [unescape(v) for v in explicit[key]]
    if "prompts_file" in explicit and explicit["prompts_file"] is not None:
        explicit["prompts_file"] = str(explicit["prompts_file"])
    if greedy:
        explicit["temperature"] = 0.0
    cfg = config_mod.resolve(GenerateConfig, file=config, section="generate", explicit=explicit)
    check_output_file(output, force)
    prompts = load_prompts(cfg)
    rows = len(prompts) * cfg.num_samples
    if stream is None:
        stream = rows == 1 and output is None
    # Streaming shows the first completion as it is made; any others print when their batch ends.

    def on_text(row: int, piece: str) -> None:
        if row == 0:
            out.print(piece, end="", markup=False, highlight=False, soft_wrap=True)
            out.file.flush()

    def on_batch(batch) -> None:
        for item in batch:
            c = item.completion
            if stream and c.prompt_index == 0 and c.sample_index == 0:
                out.print()  # the streamed completion is complete
                continue
            if output is not None and not stream:
                continue  # batch use: the records go to the file
            label = f"prompt {c.prompt_index + 1}" + (f", sample {c.sample_index + 1}" if cfg.num_samples > 1 else "")
            out.rule(label, style="dim")
            out.print(f"[dim]{_escape(item.prompt.display)}[/]{_escape(c.text)}", soft_wrap=True)

    if stream:
        out.print(f"[dim]{_escape(prompts[0].display)}[/]", end="", soft_wrap=True)
    results = run_generate(checkpoint, cfg, device=_device(device), on_text=on_text if stream else None, on_batch=on_batch)
    if output is not None:
        write_jsonl(output, results, cfg)
        err.print(f"wrote {len(results)} completion(s) to {output}")


def _escape(text: str) -> str:
    from rich.markup import escape

    return escape(text)


def _device(name: str) -> str:
    if name != "auto":
        return name
    import torch

    return "cuda" if torch.cuda.is_available() else "cpu"

