"""The options every stage that runs a checkpoint shares (`generate`, `chat`, `eval`): where it
runs and whether the decode step is compiled (neither changes what is computed beyond float
rounding, so neither is hashed); beam search (generate, eval), hashed where it is on."""

from __future__ import annotations

from dataclasses import dataclass

from llmkit.options import Options, option

# What a prompt longer than the context does: keep its last tokens (slide) or refuse (error).
OVERFLOW_POLICIES = ("slide", "error")


@dataclass
class BeamSearch(Options):
    """Beam search instead of sampling (llmkit/inference/beam.py), for generate and eval's generated metrics."""

    num_beams: int = option(1, "Beam search: keep this many likeliest continuations of each prompt and give the likeliest "
                            "finished one (transformers' num_beams; 1 = none: sample, or greedy).", range="[1, 64]",
                            hashed_unless=1)
    length_penalty: float = option(1.0, "With --num-beams: a finished beam's log-probability is divided by its length to this "
                                   "power (transformers' length_penalty; above 0 favours longer answers).", hashed_unless=1.0)

    def check_beams(self, given: frozenset[str]) -> None:
        if self.num_beams == 1 and "length_penalty" in given:
            raise ValueError("--length-penalty scores the beams of --num-beams, and there is one; give --num-beams N (N > 1), or "
                             "leave --length-penalty out")

    def params(self) -> dict:
        """GenerationParams' beam fields."""
        return {"num_beams": self.num_beams, "length_penalty": self.length_penalty}


@dataclass
class Inference(Options):
    device: str = option("auto", "cpu, cuda, mps or auto.", runtime=True)
    compile: bool = option(False, "torch.compile the decode step of generation: faster per token after a compilation of seconds "
                           "(pays off on long outputs and many prompts; docs/generate.md).", flags=("--compile/--no-compile",), runtime=True)
