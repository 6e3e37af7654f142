"""`llmkit average CKPT... -o OUT [--weights ...]`: a model soup (llmkit.model.averaging)."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Optional

from llmkit.options import Options, comma_floats, option
from llmkit.stage_command import argument, stage_command


@dataclass
class AverageConfig(Options):
    weights: list[float] = option(default_factory=list, cli_type=Optional[str], parse=comma_floats, range="[0, inf)",
                                  help="Weight of each checkpoint, comma-separated, in order (default: equal); normalised to sum 1.")
    seed: int = option(0, "Recorded in the manifest (averaging is deterministic).", range="[0, 4294967295]", hashed=False,
                       recorded_as="manifest seed")

    def __post_init__(self) -> None:
        if isinstance(self.weights, str):
            self.weights = comma_floats(self.weights)
        super().__post_init__()


def _average(config: AverageConfig, *, checkpoints: list[Path], out: Path, force: bool) -> None:
    """Average the weights of checkpoints of one architecture (a model soup) into a new checkpoint."""
    from llmkit import artifacts
    from llmkit.errors import UserError
    from llmkit.inspect_view import print_checkpoint_summary
    from llmkit.model.averaging import normalised, write_average
    from llmkit.model.records import CheckpointStats

    if len(checkpoints) < 2:
        raise UserError("give at least two checkpoints to average")
    members = [artifacts.load(path, kind="checkpoint") for path in checkpoints]
    weights = normalised(config.weights, len(members))
    artifacts.check_output(out, force, inputs=checkpoints)
    first = CheckpointStats.of(members[0])
    starts = {member.stats.get("document_start") for member in members}
    stats = CheckpointStats(params=first.params, model=first.model, task=first.task, labels=first.labels,
                            document_start=starts.pop() if len(starts) == 1 else None).to_dict()
    write_average(out, members, weights, config={"method": "weighted mean", "weights": weights}, seed=config.seed,
                  stats=dict(stats, averaged=len(members)), force=force)
    print_checkpoint_summary(out)


average = stage_command(
    "average", AverageConfig, _average,
    arguments=[argument("checkpoints", "Checkpoint artifacts of one architecture, tokenizer and task.", type=list[Path])],
    out="Output checkpoint artifact directory.",
)
