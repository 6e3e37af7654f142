"""`llmkit generate`: options in, text out (`llmkit chat` lives in chat.py and shares the engine).

Heavy imports (torch) happen inside the functions so `llmkit --help` stays fast.
"""

from __future__ import annotations

from pathlib import Path
from typing import Optional

from llmkit.errors import UsageError
from llmkit.generate.config import GenerateConfig
from llmkit.stage_command import argument, stage_command


def _generate(config: GenerateConfig, *, checkpoints: list[Path], out: Optional[Path], force: bool) -> None:
    """Generate text from a checkpoint (several: their ensemble): sampling or greedy, batched, streamed, KV-cached."""
    from llmkit.console import err, write_generated
    from llmkit.console import out as console
    from contextlib import nullcontext

    from llmkit.generate.stage import COMPLETIONS, JsonlOutput, load_prompts, run_generate
    from llmkit.outputs import check_output_file

    if config.logprobs is not None and out is None:
        raise UsageError(f"--logprobs {config.logprobs} goes into the output records, which only -o writes; give -o FILE.jsonl")
    check_output_file(out, force, inputs=[*config.ensembling.members(checkpoints), config.prompts_file], ours=COMPLETIONS)
    prompts = load_prompts(config)
    rows = len(prompts) * config.num_samples
    stream = config.stream if config.stream is not None else rows == 1 and out is None and config.beams.num_beams == 1
    # Streaming shows the first completion as it is made; any others print when their batch ends.

    open_line = False  # a streamed completion printed and not yet ended

    def on_text(row: int, piece: str) -> None:
        nonlocal open_line
        if row == 0:
            open_line = True
            write_generated(piece)

    def on_batch(batch) -> None:
        nonlocal open_line
        if writer is not None:
            writer.write(batch)
            bar.advance(task, len(batch))
        for item in batch:
            c = item.completion
            if stream and c.prompt_index == config.first_index and c.sample_index == 0:
                console.print()  # the streamed completion is complete
                open_line = False
                continue
            if out is not None and not stream:
                continue  # batch use: the records go to the file
            label = f"prompt {c.prompt_index + 1}" + (f", sample {c.sample_index + 1}" if config.num_samples > 1 else "")
            console.rule(label, style="dim")
            between = "\n" if item.framed else ""  # (an answer to a framed prompt, not its continuation)
            write_generated((item.prompt.display + between, "dim"), c.text, end="\n")

    def on_ready(prompts, framed=None) -> None:  # the prompt is shown only once the checkpoint has loaded
        nonlocal open_line
        if stream:
            if rows > 1:  # (its rule, as every later completion has: the first was the only one without)
                console.rule(f"prompt {config.first_index + 1}{', sample 1' if config.num_samples > 1 else ''}", style="dim")
            shown = prompts[0].display + ("\n" if framed and framed[0] else "")  # (an answer goes on a line of its own)
            write_generated((shown, "dim"))
            open_line = not shown.endswith("\n")

    from llmkit.console import progress

    bar = progress()
    bar.disable = bar.disable or stream or out is None  # batch use only: printed completions need the terminal
    task = bar.add_task("generating", total=rows)
    try:
        with JsonlOutput(out, config, force) if out is not None else nullcontext() as writer, bar:
            results = run_generate(checkpoints, config, prompts=prompts, on_text=on_text if stream else None, on_batch=on_batch,
                                   on_ready=on_ready)
    except BaseException:  # (Ctrl-C, or an error once the prompt is shown: NaN scores)
        if open_line:  # (the error line began after the cut-off text: `hierror: ...` where both go to one file)
            console.print()
        raise
    if out is not None:
        err.print(f"wrote {len(results)} completion(s) to {out}")


generate = stage_command(
    "generate", GenerateConfig, _generate,
    arguments=[argument("checkpoints", "Checkpoint artifact (llmkit pretrain / finetune / import); several generate as an ensemble.",
                        type=list[Path])],
    out="Write one JSON record per completion to this file (JSONL, whatever its name).", out_type=Optional[Path],
    force="Replace an existing -o file.",
    writes_artifact=False,
)
