"""The points a scaling law is fitted to: from a sweep artifact, or a CSV of published measurements,
or several (`read_sources`: sweeps of one tokens artifact, a smaller grid and a larger one).

    params,tokens,loss          one point per row
    params,flops,loss           tokens = flops / (6 * params)

A `budget` column (or a sweep's FLOP budget) groups points for the IsoFLOP approach.
"""

from __future__ import annotations

import contextlib
import csv
import dataclasses
import math
from dataclasses import dataclass
from pathlib import Path
from typing import Sequence

from llmkit import artifacts
from llmkit.errors import UserError
from llmkit.sweep_table import GRID_OPTIONS


@dataclass(frozen=True)
class Point:
    params: float
    tokens: float
    loss: float
    budget: float | None = None  # the FLOP budget the point was planned for (IsoFLOP grids)
    name: str = ""

    @property
    def flops(self) -> float:
        return 6.0 * self.params * self.tokens


def read_points(source: Path | str, count: str = "non_embedding") -> list[Point]:
    """Points from a sweep artifact (its table; `count` picks which parameters) or a CSV file."""
    source = Path(source)
    if source.is_dir():
        return _sweep_points(artifacts.load(source, kind="sweep"), count)
    if not source.is_file():
        raise UserError(f"no such sweep or CSV: {source}")
    if source.suffix.lower() == ".json" and (source.parent / artifacts.MANIFEST).is_file():
        raise UserError(f"{source} is a file inside the artifact {source.parent}; pass a sweep's folder, or a CSV of points")
    return _csv_points(source)


def read_sources(sources: Sequence[Path], count: str = "non_embedding") -> list[Point]:
    """The points of one source, or of several together, each named after its source
    (`sweep-a/d1-w32-t10000`). Sweeps must have trained on one tokens artifact (validation losses
    of other data are on another scale); a run both sweeps made alike (the same size, tokens and
    loss: a grid extended by a second sweep) counts once."""
    sources = [Path(source) for source in sources]
    if len(sources) == 1:
        return read_points(sources[0], count)
    _refuse_a_source_twice(sources)
    # read in one order whatever the command's (by what each is): a run both hold is kept under the same name
    sources = sorted(sources, key=source_identity)
    sweeps = [(source, artifacts.load(source, kind="sweep")) for source in sources if source.is_dir()]
    _check_one_family(sweeps)
    if sweeps and len(sweeps) < len(sources):
        from llmkit.console import note

        note("the CSV's losses are fitted with the sweep's as measured alike (on its tokens' validation split, with its "
             "tokenizer); nothing can check that: fit them apart where they are not")
    names = _source_names(sources)
    points, first_from, repeated = [], {}, 0
    for index, (name, source) in enumerate(zip(names, sources)):
        for point in read_points(source, count):
            key = (point.params, point.tokens, point.loss, point.budget)
            if first_from.setdefault(key, index) != index:  # (one source's own repeats are its measurements)
                repeated += 1
                continue
            points.append(dataclasses.replace(point, name=f"{name}/{point.name}"))
    if repeated:
        from llmkit.console import note

        note(f"{repeated} run(s) are in more than one of the sources alike (the same size, tokens and loss: one run "
             "measured once), each counted once")
    # in one order whatever the sources' (the bootstrap draws rows by position: other intervals, another fingerprint)
    return sorted(points, key=lambda p: (p.params, p.tokens, p.loss, p.budget or 0.0, p.name))


def source_identity(source: Path) -> str:
    """What a source is, whatever its path: a sweep's fingerprint, a CSV's SHA-256."""
    return artifacts.load(source, kind="sweep").fingerprint if source.is_dir() else (
        artifacts.sha256_file(source) if source.is_file() else str(source))


def _refuse_a_source_twice(sources: list[Path]) -> None:
    seen: dict[str, Path] = {}
    for source in sources:
        identity = source_identity(source)
        if identity in seen:
            raise UserError(f"{source} is {seen[identity]} again (the same {'sweep' if source.is_dir() else 'points'}); "
                            "give each source once")
        seen[identity] = source


def _check_one_family(sweeps: list[tuple[Path, artifacts.Artifact]]) -> None:
    """Sweeps fitted together trained on one tokens artifact (refused otherwise); options they
    differ in besides the grid are said: the fit takes their runs as one family."""
    if len(sweeps) < 2:
        return
    (first_path, first), rest = sweeps[0], sweeps[1:]
    tokens = lambda art: (art.recorded_input("tokens").fingerprint if art.recorded_input("tokens") else None)  # noqa: E731
    for path, art in rest:
        if tokens(art) != tokens(first):
            shown = lambda fingerprint: fingerprint[:12] if fingerprint else "none recorded"  # noqa: E731
            raise UserError(f"{path} trained on other tokens than {first_path} ({shown(tokens(art))} against "
                            f"{shown(tokens(first))}): their validation losses are not on one scale; fit each alone")
        mine, theirs = art.config, first.config
        differ = sorted(key for key in set(mine) | set(theirs) if key not in GRID_OPTIONS and mine.get(key) != theirs.get(key))
        if differ:
            from llmkit.console import note

            shown = ", ".join(f"--{key.replace('_', '-')} {theirs.get(key)!r} -> {mine.get(key)!r}" for key in differ[:3])
            note(f"{path} trained otherwise than {first_path} ({shown}{', ...' if len(differ) > 3 else ''}); the fit takes "
                 "their runs as one family")


def _source_names(sources: list[Path]) -> list[str]:
    """Each source's name (its folder's or file's), with the folders above it where two share one."""
    for depth in range(1, max(len(source.resolve().parts) for source in sources) + 1):
        names = ["/".join(source.resolve().parts[-depth:]) for source in sources]
        if len(set(names)) == len(names):
            return names
    return [str(source) for source in sources]


def _sweep_points(sweep: artifacts.Artifact, count: str) -> list[Point]:
    """From the sweep's table of runs (llmkit.sweep_table)."""
    from llmkit.sweep_table import TABLE, above_a_uniform_guess, read_rows, sweep_vocab_size

    # (hashed as read: a fit records the sweep's fingerprint, so a table changed since must not pass for it)
    with artifacts.checked_as_read(sweep.path / TABLE) if TABLE in sweep.manifest.files else contextlib.nullcontext():
        rows = read_rows(sweep)
    fix = f"check the sweep with llmkit verify {sweep.path}" if TABLE in sweep.manifest.files else "sweep again"
    points = []
    for r in rows:
        if r.state != "done" or r.final_val_loss is None:
            continue
        params = r.params if count == "total" else r.non_embedding_params
        for column, value in (("params", params), ("tokens", r.tokens), ("final_val_loss", r.final_val_loss)):
            if isinstance(value, bool) or not isinstance(value, (int, float)) or not math.isfinite(value) or value <= 0:
                raise UserError(f"{sweep.path}: run {r.name} has {column} {value!r}, not a positive number; {fix}")
        points.append(Point(params=params, tokens=r.tokens, loss=float(r.final_val_loss), budget=r.flops_budget, name=r.name))
    if not points:
        raise UserError(f"sweep {sweep.path} has no finished run with a validation loss (its runs did not validate: "
                        "--eval-every 0, or tokens without a validation split); sweep again with validation on")
    vocab = sweep_vocab_size(sweep)  # (None: an older sweep whose tokens are gone or changed since: nothing to judge by)
    if vocab and (diverged := above_a_uniform_guess([(p.name, p.loss) for p in points], vocab)):
        from llmkit.console import note

        note(f"{diverged}; the fit takes them as measured: sweep again with a lower --lr, or fit a CSV of the others")
    train = sweep.stats.get("train_tokens")  # (a sweep made before 2026-12-07 records none)
    repeated = [p for p in points if isinstance(train, int) and train > 0 and p.tokens > train]
    if repeated:
        from llmkit.console import note

        note(f"{len(repeated)} of {len(points)} runs read the tokens' training split ({train:,} tokens) more than once "
             f"(up to {max(p.tokens for p in repeated) / train:.1f} times: {', '.join(p.name for p in repeated[:3])}"
             f"{', ...' if len(repeated) > 3 else ''}); the fit takes their tokens as data seen, which repeated tokens are "
             "worth less than (Muennighoff et al., 2023)")
    return points


def _number(text: str, column: str, row: int, where: Path) -> float:
    try:
        value = float(text)
    except (TypeError, ValueError):
        raise UserError(f"{where}:{row}: {column} {text!r} is not a number") from None
    if not math.isfinite(value) or value <= 0:
        raise UserError(f"{where}:{row}: {column} must be a positive number, got {text}")
    return value


def _csv_points(path: Path) -> list[Point]:
    from llmkit.jsonl import check_not_wide

    with open(path, "rb") as handle:
        check_not_wide(handle.read(8192), str(path))
    try:
        with open(path, encoding="utf-8-sig", newline="") as handle:
            reader = csv.DictReader(handle)
            rows = [(reader.line_num, row) for row in reader]  # (the line a row ends on: blank lines and quoted breaks count)
            header = [h.strip().lower() for h in (reader.fieldnames or [])]
    except UnicodeDecodeError:
        raise UserError(f"{path} is not UTF-8 text; save the CSV as UTF-8") from None
    except csv.Error as exc:
        raise UserError(f"{path} is not a valid CSV ({exc})") from None
    if not rows:
        raise UserError(f"{path} holds no points; write a header params,tokens,loss (or params,flops,loss) and one row per run")
    repeated = sorted({name for name in header if name and header.count(name) > 1})  # (a spreadsheet's trailing empty columns: no names)
    if repeated:  # (DictReader keeps the last of two columns of a name, and case folds two names into one)
        raise UserError(f"{path} names the column {', '.join(repeated)} more than once; keep one")
    columns = set(header)
    if not {"params", "loss"} <= columns or not ({"tokens", "flops"} & columns):
        raise UserError(f"{path} has the columns {', '.join(header)}; it needs params, loss and tokens (or flops)")
    points = []
    for number, raw in rows:
        if not any((value or "").strip() for key, value in raw.items() if key is not None) and None not in raw:
            continue  # (a spreadsheet's empty trailing rows, `,,`)
        if None in raw:  # DictReader's key for the fields past the header's
            raise UserError(f"{path}:{number} has {len(header) + len(raw[None])} fields, the header {len(header)}; "
                            "fix that row (a comma inside a value needs quotes)")
        row = {k.strip().lower(): v for k, v in raw.items() if k is not None}
        if row.get("params", "") is None or row.get("loss", "") is None:  # (DictReader's value for fields the row lacks)
            raise UserError(f"{path}:{number} has {sum(v is not None for v in raw.values())} fields, the header "
                            f"{len(header)}; fix that row")
        params = _number(row.get("params"), "params", number, path)
        loss = _number(row.get("loss"), "loss", number, path)
        if row.get("tokens") not in (None, ""):
            tokens = _number(row["tokens"], "tokens", number, path)
            budget = _number(row["flops"], "flops", number, path) if row.get("flops") not in (None, "") else None
        elif row.get("flops") not in (None, ""):
            budget = _number(row["flops"], "flops", number, path)
            tokens = budget / (6.0 * params)
        else:
            raise UserError(f"{path}:{number}: tokens is empty; give the row's tokens (or its flops)")
        if "budget" in columns:  # (then `flops` is each row's 6 N D, as a fit's points.csv writes it, not a budget)
            budget = _number(row["budget"], "budget", number, path) if row.get("budget") not in (None, "") else None
        points.append(Point(params=params, tokens=tokens, loss=loss, budget=budget, name=row.get("name") or f"row {number}"))
    return points
