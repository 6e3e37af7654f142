"""`llmkit average`: checkpoints of one network averaged into a new checkpoint (a model soup).

    average([ckpt_a, ckpt_b], out, AverageConfig(weights=[1, 3])) -> out

The arithmetic and the checks that the members are one network are llmkit/model/averaging.py,
shared with training's --ema and --average-last.
"""

from __future__ import annotations

from pathlib import Path

from llmkit import artifacts, outputs
from llmkit.average.config import AverageConfig
from llmkit.errors import UsageError


def average(checkpoints: list[Path], out: Path | str, config: AverageConfig, *, force: bool = False) -> Path:
    """Average the weights of `checkpoints` (weighted by config.weights) into a checkpoint at `out`."""
    from llmkit.model.averaging import check_same_network, normalised, note_copies, write_average
    from llmkit.model.records import CheckpointStats

    if len(checkpoints) < 2:
        raise UsageError("give at least two checkpoints to average")
    members = [artifacts.load(path, kind="checkpoint") for path in checkpoints]
    weights = normalised(config.weights, len(members))
    outputs.check_output(out, force, inputs=checkpoints, writes="checkpoint")
    check_same_network(members)  # (in the order typed: what its messages name first)
    said_once = (members, checkpoints, weights)  # (noted once the soup is written: nothing said before a refusal)
    # A soup is a set: its members in one order whatever the order typed (in which the float64 sum ran,
    # the roles member:N were given and the first member's files were taken: `average b a` was another artifact)
    members, weights = map(list, zip(*sorted(zip(members, weights), key=lambda pair: (pair[0].fingerprint, pair[1]))))
    first = CheckpointStats.of(members[0])
    start = _shared_document_start(members)
    stats = CheckpointStats(params=first.params, model=first.model, task=first.task, labels=first.labels).to_dict()
    write_average(out, members, weights, config={"method": "weighted mean", "weights": weights,
                                                 **({"document_start": start} if start else {})}, seed=None,
                  stats=dict(stats, averaged=len({m.fingerprint for m, w in zip(members, weights) if w > 0})),
                  force=force)  # (a weight of 0 leaves one out; one given twice is one checkpoint)
    note_copies(*said_once, "average")
    return Path(out)


def _shared_document_start(members: list[artifacts.Artifact]) -> str | None:
    """"bos" or "eos", the token every member's documents followed (recorded, or traced through its
    lineage), recorded in the soup when every member's is known; members known to have been
    pretrained after different ones are refused (the soup would prompt after whichever one its
    lineage walk met first). None for fine-tuned members, which are prompted after <|bos|>
    whatever they were pretrained on, and where a member's start is unknown (not guessed)."""
    from llmkit.inference.prompts import refuse_different_document_starts, traced_document_start
    from llmkit.model.records import read_task

    if any(read_task(member) is not None for member in members):
        return None
    starts: dict[str | None, list[str]] = {}
    for member in members:
        starts.setdefault(traced_document_start(member), []).append(str(member.path))
    known = {start: paths for start, paths in starts.items() if start is not None}
    refuse_different_document_starts({f"<|{start}|>": paths for start, paths in known.items()}, "average")
    return next(iter(known)) if len(starts) == 1 and known else None
