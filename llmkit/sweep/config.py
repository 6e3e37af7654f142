"""The options of `llmkit sweep` (docs/scaling.md): every pretrain option as the base of each run,
and the grid on top. Declared once, here and in llmkit/pretrain/config.py."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, ClassVar, Optional

from llmkit.options import Options, comma_floats, comma_list, group, option
from llmkit.pretrain.config import PretrainConfig

GRID = "Sweep grid"
RULES = "Sweep rules (per model size)"
# The model flags the grid sets for every run; a base value for them would be overwritten.
SET_BY_GRID = ("n_layer", "n_embd", "n_head", "n_kv_head", "max_steps", "max_tokens")


def _size_list(value: Any) -> list[str]:
    sizes = comma_list(value)
    if not sizes:  # `--sizes ''` is not "the default ladder"
        raise ValueError("no size given: give LAYERSxWIDTH sizes (e.g. 1x64,2x128), or leave it out for the ladder")
    return sizes


def _budget_list(flag: str, example: str):
    def parse(value: Any) -> list[float]:
        budgets = comma_floats(value)
        if not budgets:  # (`--tokens ''` was told "give token budgets ... one of them", as if left out)
            raise ValueError(f"no budget given: give {flag} budgets (e.g. {flag} {example})")
        return budgets
    return parse


@dataclass
class SweepConfig(Options):
    # runtime for one run, but the sweep's result (the validation losses the fit reads) depends on them
    RECORDED_AS: ClassVar[dict[str, str]] = {"eval_every": "config (validation)", "eval_tokens": "config (validation)"}

    base: PretrainConfig = group(PretrainConfig, hidden=SET_BY_GRID)
    sizes: list[str] = option(default_factory=list, cli_type=Optional[list[str]], parse=_size_list, panel=GRID,
                              help="Model sizes as LAYERSxWIDTH, comma-separated (e.g. 1x64,2x128,4x256); default: the ladder.")
    ladder: int = option(5, "Sizes on the ladder when --sizes is not given: depth 1..K, each as wide as --width-per-layer x depth.",
                         panel=GRID, range="[2, inf)")
    width_per_layer: int = option(64, "Width per layer on the ladder (depth and width grow together).", panel=GRID, range="[1, inf)")
    head_dim: int = option(64, "Width of one attention head: a size of width W has W / head_dim heads.", panel=GRID,
                           range="[1, inf)")
    token_budgets: list[float] = option(default_factory=list, cli_type=Optional[list[str]], parse=_budget_list("--tokens", "2e5,1e6"),
                                        panel=GRID,
                                        range="[1, 1e15]", flags=("--tokens",),
                                        help="Token budgets, comma-separated (e.g. 2e5,1e6): every size is trained on each.")
    flops: list[float] = option(default_factory=list, cli_type=Optional[list[str]], parse=_budget_list("--flops", "1e12,1e13"),
                                panel=GRID, range="[1, inf)",
                                help="IsoFLOP budgets C instead of --tokens: per budget the --per-budget sizes nearest the expected "
                                     "optimum, each trained on C / (6 N) tokens (N: non-embedding parameters).")
    per_budget: int = option(4, "Sizes per FLOP budget.", panel=GRID, range="[3, inf)")
    tokens_per_param: float = option(20.0, "The tokens-per-parameter ratio IsoFLOP sizes are centred on (Chinchilla's 20).",
                                     panel=GRID, range="(0, inf)")
    lr_rule: str = option("width", "Learning rate per size: width (--lr x reference width / width) or constant (--lr for all).",
                          choices=("width", "constant"), panel=RULES)
    lr_reference_width: int = option(128, "The width whose learning rate --lr is (--lr-rule width).", panel=RULES, range="[1, inf)")
    min_steps: int = option(20, "Fewest optimizer steps a run takes: a small budget gets a smaller batch (down to one sequence).",
                            panel=RULES, range="[1, inf)")
    parallel: int = option(1, "Runs at once. CPU: the threads are split between them; GPUs: one run per GPU.", panel=RULES,
                           range="[1, inf)", runtime=True)

    def __post_init__(self) -> None:
        super().__post_init__()
        given = [name for name in SET_BY_GRID if _base_value(self.base, name) is not None]
        if given:
            raise ValueError(f"the sweep sets {', '.join('--' + n.replace('_', '-') for n in given)} for every run; leave it out")
        if self.token_budgets and self.flops:
            raise ValueError("give token budgets (--tokens 2e5,1e6) or FLOP budgets (--flops 1e12,1e13), not both")
        if not self.token_budgets and not self.flops:
            raise ValueError("give token budgets (--tokens 2e5,1e6) or FLOP budgets (--flops 1e12,1e13), one of them")
        # One grid however it is typed (`1x32,1x16`, a budget twice): the same runs, so the same
        # recorded config and fingerprint, and a rerun of the other spelling goes on with the sweep.
        grid = one_grid({"sizes": self.sizes, "token_budgets": self.token_budgets, "flops": self.flops})
        self.sizes, self.token_budgets, self.flops = grid["sizes"], grid["token_budgets"], grid["flops"]


def one_grid(config: dict[str, Any]) -> dict[str, Any]:
    """A sweep config's grid in order, each size and budget once (a config recorded before
    2026-12-05 holds it as typed)."""
    sizes = [f"{layers}x{width}" for layers, width in sorted({parse_size(size) for size in config.get("sizes") or []})]
    return {**config, "sizes": sizes, **{key: sorted(set(config.get(key) or [])) for key in ("token_budgets", "flops")}}


def _base_value(base: PretrainConfig, name: str) -> Any:
    holder = base.architecture if hasattr(base.architecture, name) else base
    return getattr(holder, name)


def parse_size(text: str) -> tuple[int, int]:
    """"4x256" -> (4 layers, width 256)."""
    layers, sep, width = text.lower().partition("x")
    if not sep or not layers.isdigit() or not width.isdigit() or int(layers) < 1 or int(width) < 1:
        raise ValueError(f"--sizes {text!r} is not LAYERSxWIDTH (e.g. 4x256)")
    return int(layers), int(width)
