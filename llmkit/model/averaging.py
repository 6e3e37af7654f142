"""Weight averaging: a checkpoint whose weights are the weighted mean of others' (a "model soup").

    write_average(out, [ckpt_a, ckpt_b], weights=[0.5, 0.5], config={...})

Members must be the same network (model_config.json equal but for dropout) with the same
tokenizer and task; the mean is taken in float64 over the members of a weight above 0 and stored
in their dtype (the widest where they differ), so averaging a checkpoint with itself gives back its
weights bit for bit. Used by `llmkit average` and by
the training loop's `--average-last K` and `--ema DECAY` outputs.
"""

from __future__ import annotations

import contextlib
import dataclasses
import functools
import math

from collections.abc import Iterator, Mapping
from pathlib import Path
from typing import Any, Sequence

import torch

from llmkit import artifacts
from llmkit.data.tokenizer import CHAT_TEMPLATE_FILE, END_OF_TURN, same_tokenizer, special_roles
from llmkit.errors import UsageError, UserError
from llmkit.model.io import (MODEL_CONFIG, TOKENIZER_DIR, WEIGHTS, read_model_config, refuse_a_config_its_weights_do_not_fit,
                             unreadable_weights)
from llmkit.model.records import TASK_FILE, read_sampling, read_task


def normalised(weights: Sequence[float] | None, count: int) -> list[float]:
    if not weights:
        return [1.0 / count] * count
    if len(weights) != count:
        raise UsageError(f"--weights has {len(weights)} values for {count} checkpoints; give one per checkpoint")
    try:  # fsum: exactly rounded, so the same weights in any order give the same bits
        total = math.fsum(float(w) for w in weights)
    except OverflowError:
        total = math.inf  # refused below
    if not math.isfinite(total) or total <= 0 or any(w < 0 for w in weights):
        raise UsageError(f"--weights must be finite and non-negative with a positive sum, got {list(weights)}; "
                        "they are relative (1,3 is a quarter and three quarters)")
    return [float(w) / total for w in weights]


# Elements per chunk: two 256 KB float64 buffers, reused, stay in the cache while every member
# is added, and a chunk is below torch's parallel grain (32,768), so each op runs on this thread.
# Parallel ops on small chunks each wake the OpenMP pool, which the CLI lets sleep
# (OMP_WAIT_POLICY=PASSIVE, llmkit.runtime): measured on a 330 MB three-way average, 2^15
# elements took 0.33 CPU-s and 0.33 s; 2^17 on 2 threads 0.67 CPU-s and 0.63 s; 2^20 (8 MB
# buffers) 0.53 CPU-s and 0.34 s.
CHUNK = 1 << 15


def note_copies(members: Sequence[artifacts.Artifact], paths: Sequence[Path], weights: Sequence[float], combined: str) -> None:
    """A checkpoint given twice (`average A A`, `eval A --ensemble A`, or a copy of it beside it) was
    taken for two members without a word: said, with its whole share of the `combined` ("average"
    or "ensemble"; an average's stats count it once, `averaged`). Copies of weight 0 are left out, as
    the mean leaves them out."""
    from llmkit.console import note

    given: dict[str, list[tuple[str, float]]] = {}
    for member, path, weight in zip(members, paths, weights):
        if weight > 0:
            given.setdefault(member.fingerprint, []).append((str(path), weight))
    share = "mean" if combined == "average" else "mixture"
    for copies in (c for c in given.values() if len(c) > 1):
        effect = (f"so the {combined} is that checkpoint itself" if len(given) == 1
                  else f"so it takes {sum(w for _, w in copies):.4g} of the {share}, its copies' weights together")
        note(f"{' and '.join(path for path, _ in copies)} are one checkpoint (the same fingerprint), {effect}")


def mean_state(states: Sequence[Mapping[str, torch.Tensor]], weights: Sequence[float]) -> dict[str, torch.Tensor]:
    """The weighted mean of state dicts with the same keys and shapes, in float64, stored in the members' widest dtype.

    Each tensor goes through two reused float64 buffers a chunk at a time: the arithmetic of
    `sum(t.double() * w)` element for element (no fused multiply-add, so the bits do not depend
    on the CPU's vector width), without a float64 copy of every member's tensor and of the sum:
    in a fresh process each such copy is page-faulted in (whole-tensor copies took 0.9 s of a
    330 MB three-way average, against 0.33 s here).
    """
    first = states[0]
    out = {}
    total = torch.empty(CHUNK, dtype=torch.float64)
    term = torch.empty(CHUNK, dtype=torch.float64)
    for name in first:
        tensor = first[name]
        if not tensor.is_floating_point():
            out[name] = tensor.clone()
            continue
        members = [tensor.reshape(-1)] + [state[name].reshape(-1) for state in states[1:]]
        # the widest of the members' dtypes (bf16 and fp32 give fp32): the soup does not depend on their order
        result = torch.empty(tensor.shape, dtype=functools.reduce(torch.promote_types, (m.dtype for m in members)))
        flat = result.view(-1)
        for start in range(0, flat.numel(), CHUNK):
            stop = min(start + CHUNK, flat.numel())
            acc, part = total[: stop - start].copy_(members[0][start:stop]).mul_(weights[0]), term[: stop - start]
            for member, weight in zip(members[1:], weights[1:]):
                acc += part.copy_(member[start:stop]).mul_(weight)
            flat[start:stop] = acc  # rounded to the stored dtype, as .to(dtype) rounds
        out[name] = result
    return out


class StoredWeights(Mapping):
    """A safetensors file's tensors, each read when asked for: an average holds one tensor of each
    member at a time, not every member whole. A context manager: the file stays mapped until it
    closes."""

    def __init__(self, path: Path):
        from safetensors import SafetensorError, safe_open

        self.path = path
        try:
            self._opened = safe_open(str(path), framework="pt")
            self._file = self._opened.__enter__()
            self._names = list(self._file.keys())
        except (SafetensorError, OSError, ValueError) as exc:
            raise unreadable_weights(path, exc) from None

    def __getitem__(self, name: str) -> torch.Tensor:
        from safetensors import SafetensorError

        if name not in self._names:
            raise KeyError(name)
        try:
            return self._file.get_tensor(name)
        except (SafetensorError, OSError, ValueError) as exc:
            raise unreadable_weights(self.path, exc) from None

    def __iter__(self) -> Iterator[str]:
        return iter(self._names)

    def __len__(self) -> int:
        return len(self._names)

    def shape(self, name: str) -> tuple[int, ...]:
        """A tensor's shape, from the file's header (nothing read)."""
        return tuple(self._file.get_slice(name).get_shape())

    def close(self) -> None:
        self._opened.__exit__(None, None, None)

    def __enter__(self) -> StoredWeights:
        return self

    def __exit__(self, *exc) -> None:
        self.close()


def is_lora_step(art: artifacts.Artifact) -> bool:
    """A LoRA run's step checkpoint: its adapters (and what else trained) alone, its model its base with them merged."""
    task = read_task(art)
    return task is not None and task.lora is not None and not task.lora.merged


class MergedStepWeights(Mapping):
    """A LoRA step checkpoint's model, each tensor made when asked for: its base's (float32, checked
    unchanged by fingerprint), what the step trained laid over it, the adapters merged
    (`adapters.merged_weight`, the run's own merge); `adapters.step_checkpoint_weights` takes them all
    for generate and eval. A base that is a LoRA step itself is read so in turn. A context manager,
    as StoredWeights; `files_read` lists the weights files its tensors come from."""

    def __init__(self, art: artifacts.Artifact):
        from llmkit.model.adapters import is_adapter_key, of_the_base, step_base

        task = read_task(art)
        self.scaling = task.lora.alpha / task.lora.rank
        base = step_base(art, read_model_config(art.path))
        with contextlib.ExitStack() as opened:
            self._base = opened.enter_context(MergedStepWeights(base) if is_lora_step(base) else StoredWeights(base.file(WEIGHTS)))
            self._step = opened.enter_context(StoredWeights(art.file(WEIGHTS)))
            opened.pop_all()
        self.files_read = [art.file(WEIGHTS), *getattr(self._base, "files_read", [base.file(WEIGHTS)])]
        trained = [name for name in self._step if not is_adapter_key(name)]
        self._names = list(dict.fromkeys([name for name in self._base if of_the_base(name)] + trained))
        self._known, self._trained = set(self._names), set(trained)

    def __getitem__(self, name: str) -> torch.Tensor:
        from llmkit.model.adapters import base_tensor, merged_weight

        if name not in self._known:
            raise KeyError(name)
        value = self._step[name] if name in self._trained else base_tensor(self._base[name])
        prefix = name[: -len(".weight")] if name.endswith(".weight") else None
        if prefix is not None and f"{prefix}.lora_A" in self._step:
            return merged_weight(value, self._step[f"{prefix}.lora_A"], self._step[f"{prefix}.lora_B"], self.scaling)
        return value

    def __iter__(self) -> Iterator[str]:
        return iter(self._names)

    def __len__(self) -> int:
        return len(self._names)

    def shape(self, name: str) -> tuple[int, ...]:
        """A tensor's shape (a merge keeps its weight's), from the files' headers."""
        return self._step.shape(name) if name in self._trained else self._base.shape(name)

    def close(self) -> None:
        self._base.close()
        self._step.close()

    def __enter__(self) -> MergedStepWeights:
        return self

    def __exit__(self, *exc) -> None:
        self.close()


def _refuse_other_tensors(members: Sequence[artifacts.Artifact], states: Sequence[StoredWeights]) -> None:
    """Members of one model config hold the same tensors of the same shapes, unless a file was damaged
    or replaced (a mean over the first member's elements cut a longer one short, or failed on a shorter
    one, and wrote a checkpoint no loader takes)."""
    for art, state in zip(members[1:], states[1:]):
        if set(state) != set(states[0]):
            differ = sorted(set(state) ^ set(states[0]))
            raise UserError(f"{art.path} holds other tensors than {members[0].path} ({', '.join(differ[:3])}) under the same "
                            "model_config.json; the checkpoint is damaged, rebuild it")
        for name in states[0]:
            if state.shape(name) != states[0].shape(name):
                raise UserError(f"{art.path}'s {name} has shape {state.shape(name)} where {members[0].path}'s has "
                                f"{states[0].shape(name)}, under the same model_config.json; one checkpoint is damaged, "
                                "rebuild it")


def _refuse_non_finite(state: dict[str, torch.Tensor], members: Sequence[artifacts.Artifact],
                       states: Sequence[StoredWeights]) -> None:
    """A soup with nan or inf in it came from a member that has them (a mean of finite numbers is
    finite): named, not written."""
    for name, tensor in state.items():
        if tensor.is_floating_point() and not torch.isfinite(tensor).all():
            holders = [str(art.path) for art, member in zip(members, states) if not torch.isfinite(member[name]).all()]
            raise UserError(f"the average's {name} is not finite: {', '.join(holders)} holds nan or inf there; leave that "
                            "checkpoint out (or give it --weights 0)")


def _task_of(art: artifacts.Artifact) -> dict | None:
    """What members must share of their task record (read through its one reader)."""
    record = read_task(art)
    return None if record is None else {"task": record.task, "labels": record.labels, "template": record.template}


def _tuned_for(task: dict, path) -> str:
    return f"{path} is fine-tuned for {task.get('task')}" if task else f"{path} is not fine-tuned"


def check_same_tokenizer(members: Sequence[artifacts.Artifact], combined: str) -> None:
    for art in members:  # (compared, then copied into the result: a same-size edit was averaged under the fingerprint)
        with artifacts.checked_as_read(*[art.path / name for name in art.manifest.files if name.startswith(f"{TOKENIZER_DIR}/")]):
            pass
    first = members[0]
    for art in members[1:]:
        if not same_tokenizer(first.path, art.path):
            raise UserError(f"{art.path} has another tokenizer than {first.path}; {combined} checkpoints share one "
                            "(train them from one tokens artifact, or import them from folders of one tokenizer)")


def _own_prompt_format(art: artifacts.Artifact) -> tuple[str | None, list | None]:
    """An imported model's own chat template and end-of-turn tokens (its tokenizer folder's): how it
    is prompted and where its replies end where no fine-tune's task.json says otherwise."""
    folder = art.path / TOKENIZER_DIR
    template = folder / CHAT_TEMPLATE_FILE
    ends = (special_roles(folder) or {}).get(END_OF_TURN)
    return (template.read_text(encoding="utf-8") if template.is_file() else None, sorted(ends) if ends else None)


def check_same_task(members: Sequence[artifacts.Artifact], combined: str) -> None:
    """Refuse members with different tokenizers or tasks; `combined` says how they are used ("averaged")."""
    check_same_tokenizer(members, combined)
    first = members[0]
    task = _task_of(first) or {}
    for art in members[1:]:
        theirs = _task_of(art) or {}
        if theirs.get("labels") != task.get("labels") or theirs.get("task") != task.get("task"):
            raise UserError(f"{_tuned_for(theirs, art.path)} and {_tuned_for(task, first.path)}"
                            f"{' (other labels)' if theirs.get('task') == task.get('task') else ''}; {combined} checkpoints share one task: "
                            "give checkpoints fine-tuned alike, or base models only")
        if theirs.get("template") != task.get("template"):
            # the prompt a member was trained on is the one it is given; two templates cannot both hold
            raise UserError(f"{art.path} was fine-tuned with another prompt template than {first.path}; {combined} "
                            "checkpoints share one (fine-tune them with the same --template)")
        prompted = task.get("template") is None and task.get("task") != "classify"  # (a classifier is never prompted)
        if prompted and _own_prompt_format(art) != _own_prompt_format(first):
            # (the result took the first member's by fingerprint order: a chat format by accident)
            raise UserError(f"{art.path} has another chat template or end-of-turn tokens than {first.path} (its "
                            f"{TOKENIZER_DIR}/{CHAT_TEMPLATE_FILE} or special_tokens.json); {combined} checkpoints are "
                            "prompted one way: import them from folders with the same tokenizer files")


def check_same_network(members: Sequence[artifacts.Artifact]) -> None:
    """Refuse members that are not one architecture with one tokenizer and one task (the tokenizer
    and task first: another tokenizer usually means another vocabulary size too, which is not the
    problem to name)."""
    check_same_task(members, "averaged")
    first = members[0]

    def config_of(art):
        config = read_model_config(art.path)
        data = config.to_dict()
        data.pop("dropout", None)  # training-only: members may differ in it
        # the MLP's width, not the ratio it came from: an import picks a ratio that lands on the width, and
        # a model exported, re-saved by transformers and imported again is the same network at 4.5 or 4.0
        data.pop("mlp_ratio", None)
        data["mlp_hidden"] = config.mlp_hidden
        return data

    reference = config_of(first)
    for art in members[1:]:
        theirs = config_of(art)
        if theirs != reference:
            differ = [f"{key} {theirs.get(key)} against {reference.get(key)}"
                      for key in sorted(set(theirs) | set(reference)) if theirs.get(key) != reference.get(key)]
            raise UserError(f"{art.path} is another network than {first.path} ({', '.join(differ[:3])}); only checkpoints "
                            "of one architecture can be averaged")
    from llmkit.model.ensemble import classifier_input_limit

    tasks = {art.path: read_task(art) for art in members}
    if not any(task is not None and task.is_classifier for task in tasks.values()):
        return
    cut = {path: classifier_input_limit(read_model_config(path), task) for path, task in tasks.items()}
    if len(set(cut.values())) > 1:
        # the soup's task.json keeps one cut, so it would depend on the members' order
        shown = ", ".join(f"{path} {tokens}" for path, tokens in cut.items())
        raise UserError(f"the classifiers cut their texts at different lengths (--seq-len: {shown}); averaged "
                        "checkpoints share one (fine-tune them with the same --seq-len)")


def write_average(out: Path, members: Sequence[artifacts.Artifact], weights: Sequence[float], *, config: dict[str, Any],
                  seed: int | None, stats: dict[str, Any], force: bool = False, lock: bool = True,
                  roles: Sequence[str] | None = None, extra_inputs: Sequence[tuple[str, artifacts.Artifact]] = (),
                  state: dict[str, torch.Tensor] | None = None, guard_inputs: bool = True) -> Path:
    """A checkpoint artifact at `out`: the members' weighted mean (or `state` as given), their
    model config, tokenizer and task, and every member as an input."""
    import shutil

    check_same_network(members)
    first = members[0]
    taking_part = members  # (those of weight above 0: their files and records are the soup's)
    if state is None:
        # a member of weight 0 is left out, as an ensemble leaves it out (0 * nan would be nan), and
        # the soup's files (model config, tokenizer, task) are the first member's that takes part
        # summed in the members' fingerprint order: the soup's bits are the same whatever order they come in
        # (llmkit average's, as typed; --average-last's, by step)
        chosen = sorted(((art, weight) for art, weight in zip(members, weights) if weight > 0),
                        key=lambda pair: (pair[0].fingerprint, pair[1]))
        first = chosen[0][0]
        taking_part = [art for art, _ in chosen]
        with contextlib.ExitStack() as files:
            # a LoRA run's step checkpoint as generate and eval load it: its base with its adapters merged
            states = [files.enter_context(MergedStepWeights(art) if is_lora_step(art) else StoredWeights(art.file(WEIGHTS)))
                      for art, _ in chosen]
            from llmkit.model.adapters import refuse_unrecorded_adapters

            for (art, _), member in zip(chosen, states):
                refuse_unrecorded_adapters(art, member)
                if not is_lora_step(art):  # (a step's base is checked so as it is read)
                    refuse_a_config_its_weights_do_not_fit(read_model_config(art.path), art.file(WEIGHTS))
            read = [file for (art, _), s in zip(chosen, states) for file in getattr(s, "files_read", [art.file(WEIGHTS)])]
            # (each file hashed beside the reads: load checks their sizes only)
            with artifacts.checked_as_read(*dict.fromkeys(read)):
                _refuse_other_tensors([art for art, _ in chosen], states)
                state = mean_state(states, [weight for _, weight in chosen])
                _refuse_non_finite(state, [art for art, _ in chosen], states)
    from safetensors.torch import save_file

    # A training run writes its companions inside itself (RUN/ema): its listed files are untouched.
    inputs = [m.path for m in members] if guard_inputs else []
    with artifacts.create(out, "checkpoint", force=force, lock=lock, inputs=inputs) as build:
        save_file(state, str(build.dir / WEIGHTS), metadata={"format": "pt"})
        shutil.copy2(first.file(MODEL_CONFIG), build.dir / MODEL_CONFIG)
        shutil.copytree(first.path / TOKENIZER_DIR, build.dir / TOKENIZER_DIR)
        recommended = {read_sampling(art) for art in taking_part}  # (imports recommending one sampling: the soup's too)
        if len(recommended) == 1 and None not in recommended:
            recommended.pop().write(build.dir)
        if TASK_FILE in first.manifest.files:
            # the soup's weights are plain (a step's adapters were merged): its LoRA record, where all share one, is merged
            loras = [dataclasses.replace(task.lora, merged=True) if task is not None and task.lora is not None else None
                     for task in map(read_task, taking_part)]
            if all(lora == loras[0] for lora in loras) and not is_lora_step(first):
                shutil.copy2(first.file(TASK_FILE), build.dir / TASK_FILE)
            else:  # how one member was trained (LoRA of rank r, or none) is no record of the soup's
                lora = loras[0] if all(lora == loras[0] for lora in loras) else None
                dataclasses.replace(read_task(first), lora=lora).write(build.dir)
        for index, art in enumerate(members):
            build.add_input(roles[index] if roles else f"member:{index}", art)
        for role, art in extra_inputs:
            build.add_input(role, art)
        build.config = config
        build.seed = seed
        build.stats = stats
    return Path(out)
