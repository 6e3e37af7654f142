"""`llmkit average`: checkpoints of one network averaged into a new checkpoint (a model soup).

    average([ckpt_a, ckpt_b], out, AverageConfig(weights=[1, 3])) -> out

The arithmetic and the checks that the members are one network are llmkit/model/averaging.py,
shared with training's --ema and --average-last.
"""

from __future__ import annotations

from pathlib import Path

from llmkit import artifacts, outputs
from llmkit.average.config import AverageConfig
from llmkit.errors import UserError


def average(checkpoints: list[Path], out: Path | str, config: AverageConfig, *, force: bool = False) -> Path:
    """Average the weights of `checkpoints` (weighted by config.weights) into a checkpoint at `out`."""
    from llmkit.model.averaging import normalised, write_average
    from llmkit.model.records import CheckpointStats, recorded_document_start

    if len(checkpoints) < 2:
        raise UserError("give at least two checkpoints to average")
    members = [artifacts.load(path, kind="checkpoint") for path in checkpoints]
    weights = normalised(config.weights, len(members))
    outputs.check_output(out, force, inputs=checkpoints)
    stats_of = [CheckpointStats.of(member) for member in members]
    first = stats_of[0]
    starts = {recorded_document_start(member) for member in members}  # kept when the members agree on it
    start = starts.pop() if len(starts) == 1 else None
    stats = CheckpointStats(params=first.params, model=first.model, task=first.task, labels=first.labels).to_dict()
    write_average(out, members, weights, config={"method": "weighted mean", "weights": weights,
                                                 **({"document_start": start} if start else {})}, seed=config.seed,
                  stats=dict(stats, averaged=len(members)), force=force)
    return Path(out)
