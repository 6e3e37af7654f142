"""The runtime options every stage that runs a checkpoint shares (`generate`, `chat`, `eval`):
where it runs and whether the decode step is compiled. Neither changes what is computed beyond
float rounding, so neither is hashed."""

from __future__ import annotations

from dataclasses import dataclass

from llmkit.options import Options, option

# What a prompt longer than the context does: keep its last tokens (slide) or refuse (error).
OVERFLOW_POLICIES = ("slide", "error")


@dataclass
class Inference(Options):
    device: str = option("auto", "cpu, cuda, mps or auto.", runtime=True)
    compile: bool = option(False, "torch.compile the decode step of generation: faster per token after a compilation of seconds "
                           "(pays off on long outputs and many prompts; docs/generate.md).", flags=("--compile/--no-compile",), runtime=True)
