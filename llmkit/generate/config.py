"""The options of `llmkit generate` and `llmkit chat` (docs/generate.md): declared once, here.

Both sample with the `Sampling` group, each with its own defaults (chat: longer replies, a
cooler temperature and top-k 50).
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from llmkit.errors import UserError
from llmkit.model.ensemble_options import Ensembling
from llmkit.inference.options import OVERFLOW_POLICIES, BeamSearch, Inference
from llmkit.options import Options, group, option, seed_option, stop_strings, unescape, unescape_each

SAMPLING = "Sampling"
RUN = "Run"


@dataclass
class Sampling(Options):
    max_new_tokens: int = option(128, "Tokens to generate per completion.", flags=("--max-new-tokens", "-n"), range="[1, inf)")
    min_new_tokens: int = option(0, "Tokens to generate before an end token may end a completion (transformers' "
                                 "min_new_tokens; a --stop string still ends it).", range="[0, inf)")
    temperature: float = option(0.8, "Sampling temperature; 0 = greedy.", range="[0, inf)")
    greedy: bool = option(False, "Always take the most likely token (same as --temperature 0).", flags=("--greedy/--no-greedy",))
    top_k: int | None = option(None, "Sample only among the k most likely tokens (0 = all of them).", range="[0, inf)")
    top_p: float | None = option(None, "Nucleus sampling: the smallest set of tokens with this much probability.", range="(0, 1]")
    repetition_penalty: float = option(1.0, "> 1 discourages repeating tokens (1 = off).", range="(0, inf)")
    stop: list[str] = option(default_factory=list, help="Stop when this string appears (repeatable; \\n typed is a newline); it is not printed.",
                             parse=stop_strings)

    def __post_init__(self) -> None:
        super().__post_init__()
        if any(not text for text in self.stop):  # a flag's is refused as it is parsed; a config file's here
            raise ValueError("--stop: an empty stop string would stop at once; leave it out or give the text to stop at")
        if self.top_k == 0:  # (chat's default of 50 had no way off; recorded as no top-k, which it is)
            self.top_k = None
        if self.min_new_tokens > self.max_new_tokens:
            raise UserError(f"--min-new-tokens {self.min_new_tokens} is more than --max-new-tokens {self.max_new_tokens}; "
                            "give at most as many")

    SAMPLING_OPTIONS = ("temperature", "greedy", "top_k", "top_p", "repetition_penalty")

    def with_recommended(self, record, given: frozenset[str] | None, where: str, draws: bool = False) -> Sampling:
        """This sampling, with what a model's makers recommend (`record`, an import's
        generation_config.json) in place of each option not given (typed or in a config file), as
        transformers' generate() applies its generation config; a note names the values taken
        where they change anything. A greedy record gives greedy and its repetition penalty alone;
        an option that asks for a draw (a temperature, top-k, top-p, `draws`: several samples of a
        prompt) is no greedy one's."""
        if record is None:
            return self
        given = given or frozenset()
        names = ("greedy", "repetition_penalty") if record.greedy else self.SAMPLING_OPTIONS
        if ("greedy" in given and self.greedy) or ("temperature" in given and self.temperature == 0):
            names = ("repetition_penalty",)  # (greedy asked for: a temperature or top-p of the model's draws nothing)
        taken = {name: getattr(record, name) for name in names if name not in given}
        if draws or given & {"greedy", "temperature", "top_k", "top_p"}:
            taken.pop("greedy", None)
        taken = {name: value for name, value in taken.items() if value != getattr(self, name)}  # (what changes)
        if not taken:
            return self
        from llmkit.console import note

        shown = ", ".join("greedy" if name == "greedy" else f"{name.replace('_', '-')} {value:g}" if value is not None
                          else f"no {name.replace('_', '-')}" for name, value in taken.items())
        note(f"sampling as {where} recommends (its generation_config.json): {shown}; the options "
             f"({', '.join('--' + name.replace('_', '-') for name in taken)}) choose otherwise")
        return dataclasses.replace(self, **taken)

    def params(self, seed: int, **more: Any):
        """The engine's GenerationParams; an impossible setting is a one-line error."""
        from llmkit.inference.engine import GenerationParams

        try:
            return GenerationParams(
                temperature=0.0 if self.greedy else self.temperature, top_k=self.top_k, top_p=self.top_p,
                repetition_penalty=self.repetition_penalty, max_new_tokens=self.max_new_tokens,
                min_new_tokens=self.min_new_tokens, stop=list(self.stop), seed=seed, **more,
            )
        except ValueError as exc:
            raise UserError(f"invalid generation setting: {exc}") from exc


def _refuse_contradicting_greedy(config: Options, given: frozenset[str]) -> None:
    """--greedy is temperature 0: another temperature given beside it (typed, or in a config file)
    asks for two things, even one equal to the stage's default; temperature 0 agrees with it. A
    --top-k or --top-p given beside either narrows a draw that never happens (it was ignored unsaid)."""
    sampling = config.sampling
    if sampling.greedy and "temperature" in given and sampling.temperature != 0:
        raise ValueError(f"--greedy takes the most likely token, which --temperature {sampling.temperature:g} contradicts; "
                         "give one of the two")
    narrowing = [f"--{name.replace('_', '-')} {getattr(sampling, name):g}" for name in ("top_k", "top_p")
                 if name in given and getattr(sampling, name) is not None]
    if narrowing and (sampling.greedy or sampling.temperature == 0):
        greedy = "--greedy" if sampling.greedy else "--temperature 0"
        raise ValueError(f"{greedy} takes the most likely token, so {' and '.join(narrowing)} would change nothing; "
                         f"leave {'it' if len(narrowing) == 1 else 'them'} out, or sample at a temperature above 0")


@dataclass
class GenerateConfig(Options):
    prompts: list[str] = option(default_factory=list, help="Prompt text; repeat for several (batched). \\n typed is a newline.",
                                flags=("--prompt", "-p"), parse=unescape_each)
    prompts_file: Path | None = option(None, "File of prompts: .txt (one per line), .jsonl ({\"prompt\": ...} or "
                                       "{\"messages\": [...]}), .csv or .parquet (a prompt column); - reads standard input (JSONL where every line is a JSON "
                                       "object, else one prompt per line).", flags=("--prompts",))
    sampling: Sampling = group(Sampling, panel=SAMPLING, help={
        "repetition_penalty": "> 1 discourages repeating tokens (1 = off); an ensemble applies it to each member's logits, then mixes them."})
    ignore_eos: bool = option(False, "Keep going past the end-of-text token (a chat's role and other special tokens still end a reply).",
                              flags=("--ignore-eos/--no-ignore-eos",), panel=SAMPLING)
    num_samples: int = option(1, "Completions per prompt.", flags=("--num-samples", "-s"), panel=SAMPLING, range="[1, inf)")
    beams: BeamSearch = group(BeamSearch, panel=SAMPLING)
    batch_size: int = option(8, "Rows generated together (left-padded).", panel=RUN, range="[1, inf)")
    context_overflow: str = option("slide", "When prompt + output exceed the context: slide (keep the newest tokens) or error.",
                                   choices=OVERFLOW_POLICIES, panel=RUN)
    stream: bool | None = option(None, "Print tokens as they arrive (default: when there is one completion).",
                                 flags=("--stream/--no-stream",), panel=RUN, runtime=True)
    inference: Inference = group(Inference, panel=RUN)
    ensembling: Ensembling = group(Ensembling)
    seed: int = seed_option("Seed: the same seed gives the same text.")
    logprobs: int | None = option(None, "Write each completion token's log-probability into the -o records, and the N "
                                  "likeliest tokens' at each step (0: the chosen token's alone); the model's, before "
                                  "sampling's settings.", range="[0, 20]")
    first_index: int = option(0, "The first prompt's index: each record's prompt_index and each sample's seed follow it, so "
                              "-p TEXT --first-index K remakes record K of a --prompts run.", panel=SAMPLING, range="[0, inf)")

    def check_given(self, given: frozenset[str]) -> None:
        _refuse_contradicting_greedy(self, given)
        self.beams.check_beams(given)
        if self.beams.num_beams > 1:  # (a search, which draws nothing: what shapes a draw, or needs tokens as made, is refused)
            drawn = [f"--{name.replace('_', '-')}" for name in ("temperature", "greedy", "top_k", "top_p") if name in given]
            drawn += ["--num-samples"] if self.num_samples > 1 else []
            built = ["--compile"] * self.inference.compile + ["--stream"] * bool(self.stream)
            if drawn:
                raise ValueError(f"--num-beams {self.beams.num_beams} searches for the likeliest completion and draws nothing, "
                                 f"so {', '.join(drawn)} would change nothing; leave {'it' if len(drawn) == 1 else 'them'} out")
            if built:
                raise ValueError(f"--num-beams {self.beams.num_beams} with {', '.join(built)} is not built; leave "
                                 f"{'it' if len(built) == 1 else 'them'} or --num-beams out")
        if self.num_samples > 1 and (self.sampling.greedy or self.sampling.temperature == 0):
            greedy = "--greedy" if self.sampling.greedy else "--temperature 0"
            raise ValueError(f"{greedy} takes the most likely token, so --num-samples {self.num_samples} would give "
                             f"{self.num_samples} copies of one completion; leave it out, or sample at a temperature above 0")

    def params(self, sampling: Sampling | None = None):
        """The engine's GenerationParams; `sampling`: in place of the config's (`Sampling.with_recommended`)."""
        return (sampling or self.sampling).params(self.seed, stop_at_eos=not self.ignore_eos,
                                                  context_overflow=self.context_overflow, **self.beams.params())


@dataclass
class ChatConfig(Options):
    system: str | None = option(None, "System message that opens the conversation.", parse=unescape)
    sampling: Sampling = group(Sampling, panel=SAMPLING, max_new_tokens=256, temperature=0.7, top_k=50,
                               help={"max_new_tokens": "Longest reply in tokens."})
    inference: Inference = group(Inference, panel=RUN)
    seed: int = seed_option("Sampling seed (turn k of the session draws from a seed mixed from it and k, so sessions of other seeds share no turn's draws; /reset does not restart the count).")

    def check_given(self, given: frozenset[str]) -> None:
        _refuse_contradicting_greedy(self, given)
