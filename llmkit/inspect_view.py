"""Rich rendering of a manifest and its lineage for `llmkit inspect`."""

from __future__ import annotations

import json
import shlex
from pathlib import Path

from rich.table import Table
from rich.text import Text
from rich.tree import Tree

from llmkit.artifacts import Artifact, LineageNode, checked_as_read, input_problems
from llmkit.console import err, figure, out, styled
from llmkit.model.records import CheckpointStats


def _short(value: object, limit: int = 100) -> str:
    text = value if isinstance(value, str) else json.dumps(value, ensure_ascii=False)
    return text if len(text) <= limit else text[: limit - 1] + "…"


def _flattened(values: dict, prefix: str):
    """(dotted key, value) rows, a record within a record as rows of its own (stats.model.n_layer: the
    model's shape was one cut-off line of JSON)."""
    for key, value in values.items():
        if isinstance(value, dict) and value:
            yield from _flattened(value, f"{prefix}.{key}")
        else:
            yield f"{prefix}.{key}", value


def print_artifact(art: Artifact, tree: LineageNode) -> None:
    m = art.manifest
    table = Table(title=f"{m.kind} artifact: {art.path}", show_header=False, title_justify="left")
    table.add_column("field", style="bold")
    table.add_column("value", overflow="fold")
    table.add_row("fingerprint", m.fingerprint)
    from llmkit.errors import UserError

    try:  # (report's row: an eval's scores, a sweep's best loss, a fit's exponents, which the rows below cut or leave out)
        headline = _headline(art)
    except UserError as exc:
        headline = Text(str(exc), style="yellow")
    if headline:
        table.add_row("headline", headline)
    table.add_row("format", f"v{m.format_version} (llmkit {m.llmkit_version})")
    table.add_row("seed", "none (nothing drawn)" if m.seed is None else str(m.seed))
    table.add_row("command", Text(shlex.join(m.command)))  # whole and quoted: it is how to make the artifact again
    table.add_row("files", f"{len(m.files)}: " + _short(", ".join(m.files), 200))
    if m.state_files:  # (hashed and verified too: what --resume reads)
        table.add_row("state files", f"{len(m.state_files)}: " + _short(", ".join(m.state_files), 200))
    continued = any(ref.get("role") == "init" for ref in m.inputs)
    for key, value in _flattened(m.config, "config"):
        # (null: the option left out, whose default the stage resolved: the preset's, the context length's...; an
        # --init-from run's model: the checkpoint's. A record within: rows of its own, as stats' (an import's model
        # shape was one line of JSON cut at 100 characters))
        unset = "null (the --init-from checkpoint's)" if key == "config.model" and continued else "null (default)"
        table.add_row(key, Text(unset, style="dim") if value is None else _short(value))
    runs = m.stats.get("runs") if m.kind == "sweep" and isinstance(m.stats.get("runs"), list) else None
    for section, values in (("stats", m.stats), ("runtime", m.runtime)):
        for key, value in _flattened(values, section):
            # (a sweep's runs: a table of their own below, not a line of JSON cut at 100 characters)
            table.add_row(key, f"{len(runs)} runs (below)" if runs is not None and key == "stats.runs" else _short(value))
    table.add_row("versions", _short(", ".join(f"{k} {v}" for k, v in m.versions.items()), 200))
    out.print(table)
    if runs is not None and all(isinstance(row, dict) for row in runs):
        from llmkit.sweep_table import print_runs, sweep_vocab_size

        print_runs(runs, out, vocab_size=sweep_vocab_size(art))
    out.print(_tree(tree))


def _tree(node: LineageNode, parent: Tree | None = None, shown: set[str] | None = None) -> Tree:
    """The lineage as a tree, each artifact's inputs shown once: met again (every run of a sweep reads
    one tokens artifact), it says "(inputs above)" (a 16-run sweep printed its tokens' lineage 16 times)."""
    shown = set() if shown is None else shown
    label = Text.assemble(*([(node.role, "cyan"), ": "] if node.role != "output" else []), (node.kind, "bold"),
                          f" {node.path} ", (node.fingerprint[:12], "dim"))
    if node.problem:
        label.append(f" ({node.problem})", style="yellow")
    elif not node.found:
        label.append(" (not found)", style="yellow")
    again = bool(node.children) and node.fingerprint in shown
    if again:
        label.append(" (inputs above)", style="dim")
    shown.add(node.fingerprint)
    branch = Tree(label) if parent is None else parent.add(label)
    for child in node.children if not again else ():
        _tree(child, branch, shown)
    return branch


def _headline(art: Artifact) -> str:
    """The few numbers that tell one artifact of a kind from another."""
    s = art.stats

    if art.kind == "corpus":
        return f"{figure(s.get('documents'))} {'doc' if s.get('documents') == 1 else 'docs'}, {figure(s.get('bytes'))} bytes"
    if art.kind == "tokenizer":
        return f"vocab {figure(s.get('vocab_size'))}, {figure(s.get('bytes_per_token'))} bytes/token"
    if art.kind == "tokens":
        train, val = s.get("train", {}), s.get("val", {})
        return f"train {figure(train.get('tokens'))} / val {figure(val.get('tokens'))} tokens ({s.get('dtype')})"
    if art.kind == "checkpoint":
        stats = CheckpointStats.of(art)
        parts = [f"{figure(stats.params)} params"]
        if stats.step is not None:
            parts.append(f"step {figure(stats.step)}")
        stop = stats.stopped_early
        if isinstance(stop, dict) and isinstance(stop.get("best_val_loss"), (int, float)):  # (--patience ended it)
            parts[-1] += (f" of {figure(stats.max_steps)}" if stats.max_steps else "") + (
                f" (stopped early: the lowest val_loss {figure(stop['best_val_loss'])} at step {figure(stop.get('best_step'))})")
        for key in ("train_loss", "val_loss", "val_accuracy", "val_f1"):
            if isinstance(getattr(stats, key), (int, float)):
                parts.append(f"{key} {figure(getattr(stats, key))}")
        return ", ".join(parts) + _measured_earlier(stats)
    # a sweep's and a fit's figures from their hashed files (verify vouches for those, not for stats);
    # an artifact made before the file was: from its stats
    if art.kind == "sweep":
        from llmkit.errors import UserError
        from llmkit.sweep_table import TABLE, diverged_runs, read_rows, sweep_vocab_size

        try:
            with checked_as_read(art.path / TABLE):  # (a few kB: an edit that kept the size was shown as measured)
                runs = read_rows(art)
        except UserError:  # (not the unhashed stats' copy in its place: verify vouches for none of it)
            raise _changed(TABLE) from None
        losses = [r.final_val_loss for r in runs if isinstance(r.final_val_loss, (int, float))]
        vocab = sweep_vocab_size(art)
        diverged = len(diverged_runs([(r.name, r.final_val_loss) for r in runs], vocab)) if vocab else 0
        return (f"{len(runs)} runs" + (f", best val_loss {figure(min(losses))}" if losses else "")
                + (f" ({diverged} diverged: above a uniform guess's loss)" if diverged else ""))
    if art.kind == "scaling":
        fit = _hashed_json(art, "fit.json", dict)
        if fit is None and "fit.json" in art.manifest.files:
            raise _changed("fit.json")
        figures = {**fit["approach3"], "points": fit.get("points")} if isinstance((fit or {}).get("approach3"), dict) else s
        parts = [f"alpha {figure(figures.get('alpha'), 3)}", f"beta {figure(figures.get('beta'), 3)}"]
        if isinstance(figures.get("params_exponent"), float):
            parts.append(f"N_opt ∝ C^{figures['params_exponent']:.2f}")
        headline = ", ".join(parts) + f" ({figures.get('points')} points)"
        # constants a reader would otherwise take for a law
        return headline + ("; undetermined: no compute-optimal split" if _undetermined(art) else "")
    if art.kind == "eval":
        metrics = _hashed_json(art, "metrics.json", dict)
        if metrics is None:  # (a few hundred bytes: a hand edit that kept the size was shown as measured)
            raise _changed("metrics.json")
        return ", ".join(f"{k} {figure(v)}" for k, v in metrics.items() if isinstance(v, (int, float)) and _headline_metric(k))
    return ""


def _changed(name: str):
    """The error of a headline's hashed file that is not what was written (an edit, damage)."""
    from llmkit.errors import UserError

    return UserError(f"{name} damaged or changed since written: llmkit verify names it")


def _headline_metric(name: str) -> bool:
    """A score that tells one eval from another, not its error bars or one class's share of it (an eval of
    every benchmark listed 32 numbers, a zero-shot classifier 14)."""
    return not name.endswith(("_stderr", "_ci95", "_ci95_low", "_ci95_high")) and \
        not name.startswith(("precision_", "recall_", "f1_", "support_"))


def _hashed_json(art: Artifact, name: str, shape: type):
    """The JSON of one of the artifact's hashed files, if it lists it, its hash is the recorded one
    and it reads as `shape`; else None (a damaged or edited file: verify names it)."""
    from llmkit.errors import UserError

    if name not in art.manifest.files:
        return None
    try:
        with checked_as_read(art.path / name):
            value = json.loads((art.path / name).read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, ValueError, UserError):
        return None
    return value if isinstance(value, shape) else None


def _undetermined(art: Artifact) -> bool:
    from llmkit.errors import UserError
    from llmkit.scaling_law import Law

    try:
        return bool(Law.of(art).undetermined)
    except UserError:  # a damaged fit.json: verify says so; the headline shows what the manifest holds
        return False


def _companions(art: Artifact, damaged: list[Path]) -> list[Artifact]:
    """A training run's RUN/ema, RUN/best and RUN/average: rows of their own after the run's (they
    were not shown: report listed a folder's artifacts one level down)."""
    from llmkit import artifacts
    from llmkit.console import note
    from llmkit.errors import UserError
    from llmkit.outputs import RUN_COMPANIONS

    if art.kind != "checkpoint":
        return []
    shown = []
    for name in RUN_COMPANIONS:
        if (art.path / name / artifacts.MANIFEST).is_file():
            try:
                shown.append(artifacts.load(art.path / name))
            except UserError as exc:
                damaged.append(art.path / name)
                note(f"{art.path / name} cannot be read: {exc}")
    return shown


def artifacts_in(paths: list[Path]) -> tuple[list[Artifact], list[Path]]:
    """The artifacts `llmkit report` shows, and the damaged ones in the folders given: each path an
    artifact, or a folder of them (a recipe's runs/NAME); a folder without any (a glob's stray
    match) is skipped with a note, an unreadable artifact in one is named, and nothing to show is an error."""
    from llmkit import artifacts
    from llmkit.console import note
    from llmkit.errors import UserError
    from llmkit.outputs import RUN_MARK

    def said_unfinished(folder: Path) -> None:
        try:
            artifacts.load(folder)  # (its one line says what it is and what to rerun)
        except UserError as exc:
            note(str(exc))

    found, skipped, damaged = [], [], []
    for path in paths:
        unfinished_sweep = not (path / artifacts.MANIFEST).is_file() and path.is_dir() and artifacts.unfinished_sweep(path)
        unfinished_run = (path / RUN_MARK).is_file() and not (path / artifacts.MANIFEST).is_file() and not unfinished_sweep
        if unfinished_run or (unfinished_sweep and not any((run / artifacts.MANIFEST).is_file() for run in (path / "runs").iterdir())):
            if len(paths) == 1:  # the one thing asked for: verify's one line (it said the folder held no artifact)
                artifacts.load(path)
            said_unfinished(path)  # one among a glob's (a run still training): said, the others shown
            continue
        if path.is_file() and len(paths) > 1:  # a glob's stray file (runs/NAME/*: a log, a note): skipped as a folder is
            skipped.append(path)
            continue
        if (path / artifacts.MANIFEST).is_file() or not path.is_dir():
            try:
                found.append(artifacts.load(path))
            except UserError as exc:
                if len(paths) == 1:  # a missing path or a damaged artifact alone: the usual one-line error
                    raise
                damaged.append(path)  # one among a recipe's list: named, the others still shown (as in a folder)
                note(f"{path} cannot be read: {exc}")
            continue
        if unfinished_sweep:  # its finished runs, and the sweep said to be unfinished (the report looked whole)
            said_unfinished(path)
            path = path / "runs"
        inside = sorted(child for child in path.iterdir() if (child / artifacts.MANIFEST).is_file())
        for child in sorted(path.iterdir()):  # a run stopped before its manifest: a recipe's stage killed part way is said
            if (child / RUN_MARK).is_file() and not (child / artifacts.MANIFEST).is_file():
                said_unfinished(child)
        for child in inside:  # one damaged artifact among a folder's is named, the rest still shown
            try:
                found.append(artifacts.load(child))
            except UserError as exc:
                damaged.append(child)
                note(f"{child} cannot be read: {exc}")
        if not inside:
            skipped.append(path)
    found = [shown for art in found for shown in [art, *_companions(art, damaged)]]
    once: set[Path] = set()  # (`report sft sft/average`: the companion given, and again after its run)
    found = [art for art in found if not (art.path.resolve() in once or once.add(art.path.resolve()))]
    if skipped:
        note(f"skipped {', '.join(map(str, skipped))}: no artifact there (no manifest.json)")
    if not found:
        raise UserError(f"no readable artifact among {', '.join(map(str, paths))}; pass artifact directories or folders of them")
    return found, damaged


def print_report(arts: list[Artifact], *, as_json: bool = False, unloadable: list[Path] = ()) -> tuple[list[Path], list[Path]]:
    """One row per artifact, named relative to the folder they share (in the title), so that long
    absolute paths do not crowd out the names on a narrow terminal. An artifact whose headline
    cannot be read (a stats table or metrics.json edited by hand) keeps its row, says so there, and
    is returned, so that the others are still shown; with none readable, that is the one-line error.
    Returns those, and the artifacts an artifact made inside them is gone from or changed in. `as_json`:
    the rows as a JSON list on stdout (the notes still on stderr), with a row for each of `unloadable`
    (the damaged ones artifacts_in named), readable false."""
    import os

    from llmkit.errors import UserError

    folders = [str(art.path.resolve().parent) for art in arts]
    common = os.path.commonpath(folders) if folders else "."
    rows, damaged, notes, incomplete, records = [], [], [], [], []
    for art in arts:
        try:
            headline = _headline(art)
        except UserError as exc:  # (a hashed file changed: the row says so, and the report fails like a damaged one)
            if len(arts) == 1:
                raise
            damaged.append(art.path)
            headline = str(exc)
        except (KeyError, TypeError, AttributeError, ValueError, RuntimeError, OSError) as exc:
            if len(arts) == 1:
                raise
            damaged.append(art.path)
            headline = f"cannot be read ({type(exc).__name__}: {' '.join(str(exc).split())[:80]})"
        rows.append((os.path.relpath(art.path.resolve(), common), art.kind, art.short_fingerprint, headline))
        problems = input_problems(art)
        records.append({"path": str(art.path), "kind": art.kind, "fingerprint": art.fingerprint, "headline": headline,
                        "stats": art.stats, "readable": art.path not in damaged, "input_problems": [text for text, _ in problems]})
        notes += [f"{rows[-1][0]}: {problem}" for problem, _ in problems]
        if any(damage for _, damage in problems):
            incomplete.append(art.path)
    if len(damaged) == len(arts):
        raise UserError(f"no artifact could be read: {', '.join(map(str, damaged))}; llmkit verify shows what changed in one")
    if as_json:
        import json

        import typer

        records += [{"path": str(path), "kind": None, "fingerprint": None, "headline": None, "stats": None, "readable": False,
                     "input_problems": []} for path in unloadable]
        typer.echo(json.dumps(records, indent=2))
        return damaged, [path for path in incomplete if path not in damaged]
    table = Table(title=f"artifacts in {common}", title_justify="left")
    table.add_column("artifact", overflow="fold")
    table.add_column("kind")
    table.add_column("fingerprint", no_wrap=True)
    table.add_column("headline", overflow="fold")
    for row in rows:
        table.add_row(*row)
    out.print(table)
    for note in notes:  # (a recipe rerun that stopped part way: its later stages' rows are of the earlier run)
        err.print(styled("note:", "yellow", f" {note}"), soft_wrap=True)
    return damaged, [path for path in incomplete if path not in damaged]


def _measured_earlier(stats: CheckpointStats) -> str:
    """Said after the validation figures of a checkpoint saved between validations."""
    if stats.val_step is not None and stats.val_step != stats.step:
        return f" (validation at step {stats.val_step})"
    return ""


def print_checkpoint_summary(path) -> None:
    """The line a training stage ends with: progress, losses and the fingerprint of its checkpoint."""
    from llmkit import artifacts

    art = artifacts.load(path, kind="checkpoint")
    stats = CheckpointStats.of(art)
    line = f" {path}: " + (f"{stats.task}, " if stats.task is not None else "")
    line += f"step {stats.step}, " if stats.step is not None else ""
    # (an average or an import trained nothing itself, so it has no trained count to show)
    line += (f"{stats.trainable_params:,} of {stats.params or 0:,} parameters trained"
             if stats.trainable_params and stats.trainable_params != stats.params else f"{stats.params or 0:,} parameters")
    if stats.train_loss is not None:
        line += f", train loss {stats.train_loss:.4f}"
    if stats.val_loss is not None:
        line += f", val loss {stats.val_loss:.4f}" + (f" (ppl {stats.val_ppl:.2f})" if stats.task is None else "")
    if stats.val_accuracy is not None:
        line += f", val accuracy {stats.val_accuracy:.4f}, macro F1 {stats.val_f1:.4f}"
    line += _measured_earlier(stats)
    out.print(styled("checkpoint", "green", line + f", fingerprint {art.short_fingerprint}"), soft_wrap=True)
    for name, what in (("ema", "--ema's moving average of the weights"), ("average", "--average-last's mean of the last checkpoints"),
                       ("best", "--keep-best's weights of the lowest validation loss")):
        companion = Path(path) / name  # (written beside the run, each an artifact of its own: named, or no one finds it)
        if (companion / artifacts.MANIFEST).is_file():
            out.print(styled("checkpoint", "green", f" {companion}: {what}, fingerprint "
                             f"{artifacts.load(companion, kind='checkpoint').short_fingerprint}"), soft_wrap=True)
    next_after_checkpoint(art)


def next_after_checkpoint(art) -> None:
    """The `next:` of a stage that wrote a checkpoint: what this kind of model goes on with."""
    from llmkit.console import next_step, shell_word
    from llmkit.model.io import read_model_config

    run, task = shell_word(art.path), CheckpointStats.of(art).task
    if task == "classify":
        next_step(f"llmkit eval {run} --data TEST.jsonl -o EVAL")
    elif read_model_config(art.path).objective == "mlm":  # it neither generates nor scores text: it classifies, fine-tuned
        next_step(f"llmkit finetune {run} --task classify --data DATA.jsonl -o CLASSIFIER")
    elif task in ("sft", "dpo"):
        next_step(f"llmkit chat {run}", f"llmkit generate {run} -p TEXT", f"llmkit eval {run} --data TEST.jsonl -o EVAL")
    else:
        # (the default chat template needs llmkit's role tokens: an imported model's tokenizer has its own)
        template = "" if _has_chat_roles(art) else " --template plain"
        next_step(f"llmkit generate {run} -p TEXT", f"llmkit eval {run} --data {_held_out(art)} -o EVAL",
                  f"llmkit finetune {run}{template} --data DATA.jsonl -o SFT",
                  f"llmkit finetune {run} --task classify --data LABELLED.jsonl -o CLASSIFIER")


def _has_chat_roles(art) -> bool:
    """Whether `--template chat` fine-tunes the checkpoint: its tokenizer has llmkit's role tokens, or
    its own chat template (an imported chat model's, which the fine-tune then learns)."""
    import json

    from llmkit.data.templates import chat_template

    if (Path(art.path) / "tokenizer" / "chat_template.jinja").is_file():
        return True
    from llmkit.model.records import read_task

    template = getattr(read_task(art), "template", None)
    if isinstance(template, dict) and isinstance(template.get("jinja"), str):  # (a fine-tune in it, imported again)
        return True
    try:
        tokenizer = json.loads((Path(art.path) / "tokenizer" / "tokenizer.json").read_text(encoding="utf-8"))
        specials = {token.get("content") for token in tokenizer.get("added_tokens") or () if token.get("special")}
    except (OSError, ValueError, AttributeError):
        return True  # (nothing better to offer: the default)
    return set(chat_template()["roles"].values()) <= specials


def _held_out(art) -> str:
    """What a freshly pretrained model is evaluated on: the validation split of the tokens it trained
    on, where they are still there (eval reads it), else a held-out text file."""
    import os

    from llmkit.artifacts import manifest_kind
    from llmkit.console import shell_word

    for item in art.manifest.inputs:
        if item.get("role") == "tokens" and not item.get("within") and isinstance(item.get("path"), str):
            tokens = Path(os.path.normpath(art.path / ".." / item["path"]))
            if manifest_kind(tokens) == "tokens":
                return shell_word(tokens)
    return "HELD_OUT.txt"
