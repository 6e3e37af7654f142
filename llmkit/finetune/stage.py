"""`llmkit finetune`: supervised fine-tuning or classification from any llmkit checkpoint.

    finetune(checkpoint, data, out, FinetuneConfig.build(task="sft", template="chat")) -> out

It runs the pretraining loop itself (llmkit.train.loop.Trainer: optimizer, schedule, gradient
accumulation, checkpoints, exact resume, torchrun, metrics); only the data, the loss, the head
and the defaults differ. OUT holds metrics.jsonl and checkpoints/step_XXXXXXX/ while training
and becomes the final checkpoint artifact, with task.json describing the task and template.
With LoRA the intermediate checkpoints keep the adapters (for exact resume) and the final one
holds the merged plain weights, so generate / eval / export need nothing special.
"""

from __future__ import annotations

import json
import math
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch

from llmkit import artifacts
from llmkit.errors import UsageError, UserError
from llmkit.finetune import data as ft_data
from llmkit.finetune.config import FinetuneConfig
from llmkit.model.records import CheckpointStats, LoraRecord, TaskRecord
from llmkit.train import distributed as dist_utils
from llmkit.train.layout import check_model
from llmkit.train.launch import (keep_recorded_settings, launch, note_a_smaller_micro_batch, planned_split, planned_world,
                                 refuse_resume_with_force, runtime_record, split_batch, worker_process)
from llmkit.model.adapters import refuse_unrecorded_adapters
from llmkit.train.loop import Trainer

def finetune(checkpoint: Path | str, data: Path | str, out: Path | str, config: FinetuneConfig, *,
             resume: bool = False, force: bool = False) -> Path:
    """Fine-tune and return the run directory, which is then a checkpoint artifact."""
    refuse_resume_with_force(resume, force)
    ft_data.forget_data_sets()  # (a data set read by an earlier run in this process may have changed since)
    checkpoint, data = Path(checkpoint), Path(data)
    art = artifacts.load(checkpoint, kind="checkpoint")
    if not data.exists() and not ft_data.is_dataset_name(data):
        raise UserError(f"data not found: {data}; pass a .jsonl, .csv or .parquet file (or a folder holding train.jsonl), "
                        "or a datasets name NAME[:CONFIG]")
    if config.val_data is not None:
        if not Path(config.val_data).exists() and not ft_data.is_dataset_name(config.val_data):
            raise UserError(f"--val-data not found: {config.val_data}; pass a .jsonl, .csv or .parquet file (or a folder "
                            "holding validation.jsonl or val.jsonl), or a datasets name NAME[:CONFIG]")

        _check_held_apart(ft_data.data_file(data), ft_data.data_file(Path(config.val_data), validation=True))
    if config.devices.tp == 1 and config.devices.pp == 1:  # (split: _check_split_model's batch ways)
        note_a_smaller_micro_batch(config, _split_batch(config, planned_world(config.devices))[0])
    _check_split_model(config, art)
    given = config.was_given("max_steps", "epochs")  # (a typed --epochs 1 is a length given, though the default)
    if given is None:
        given = config.max_steps is not None or config.epochs != config.default_of("epochs")
    config = keep_recorded_settings(config, Path(out), resume=resume, lengths=("max_steps", "epochs"), length_left_out=not given)
    template_file = Path(config.template) if config.task != "classify" and Path(config.template).is_file() else None
    def compared() -> dict[str, str]:  # (a node's own copies of the files, at other paths, are the same run)
        contents = {"data": ft_data.file_digest(data)}
        if config.val_data:
            contents["val_data"] = ft_data.file_digest(Path(config.val_data), validation=True)
        if template_file is not None:
            contents["template"] = artifacts.sha256_file(template_file)
        return contents

    return launch(_train, Path(out), config, devices=config.devices, resume=resume, force=force,
                  inputs={"checkpoint": str(checkpoint.resolve()), "data": str(data if ft_data.is_dataset_name(data) else data.resolve())},
                  reads=[checkpoint, data, config.val_data, template_file], compared=compared)  # (as typed, first: named so)


def _check_held_apart(train_file: Path, val_file: Path) -> None:
    """Refuse validation data that is the training data: its loss and scores would measure nothing held out."""
    if not (train_file.is_file() and val_file.is_file()):
        return  # (the worker names a missing file)
    if train_file.samefile(val_file) or (train_file.stat().st_size == val_file.stat().st_size
                                         and artifacts.sha256_file(train_file) == artifacts.sha256_file(val_file)):
        raise UserError(f"--val-data {val_file} is the training data itself ({train_file}); give held-out records, "
                        "or leave --val-data out to hold out --val-fraction of --data")


def _check_split_model(config: FinetuneConfig, art) -> None:
    """Under --tp/--pp, what the workers would refuse, before any process starts (launch.planned_split)."""
    from llmkit.model.io import read_model_config
    from llmkit.train.layout import SPLIT_NEEDS_A_LANGUAGE_MODEL

    if config.devices.tp == 1 and config.devices.pp == 1:
        return
    if config.task == "dpo":
        raise UsageError("--task dpo scores each pair's replies with the whole model, which --tp/--pp split; leave them out "
                         "and use data parallelism (--nproc/--gpus)")
    if config.task != "sft" or config.lora_rank:
        raise UsageError(SPLIT_NEEDS_A_LANGUAGE_MODEL)
    from llmkit.model.averaging import is_lora_step

    if is_lora_step(art):  # (before any process starts: the workers refused it after encoding the data)
        raise UserError(f"{art.path} is a LoRA step checkpoint (its adapters only), which --tp/--pp cannot read a part at a "
                        "time; fine-tune from it without them")
    model_config = read_model_config(art.path)
    seq_len = _seq_len(config, model_config.context_length)
    layout = planned_split(config.devices, config.checkpoints.ema, lambda layout: check_model(model_config, layout, seq_len))
    _split_batch(config, layout.batch_ways)


def _seq_len(config: FinetuneConfig, context: int) -> int:
    seq_len = config.seq_len or context
    if seq_len > context:
        raise UsageError(f"--seq-len {seq_len} is longer than the checkpoint's context length {context}; lower --seq-len")
    return seq_len


def _split_batch(config: FinetuneConfig, batch_ways: int) -> tuple[int, int]:
    return split_batch(config.batch_size, config.devices.micro_batch, batch_ways, what=f"--batch-size {config.batch_size}",
                       fix=lambda multiple: f"choose a multiple of {multiple}")


# -- building blocks --------------------------------------------------------------------------------


def load_base_state(art, keep_head: bool):
    """The base checkpoint's weights; a classifier's head is dropped unless it is kept on purpose. A
    LoRA run's step checkpoint gives its model as generate loads it: its base with the adapters merged."""
    from llmkit.model.adapters import step_checkpoint_weights
    from llmkit.model.averaging import is_lora_step
    from llmkit.model.classifier import HEAD_PREFIX
    from llmkit.model.io import WEIGHTS, read_weights

    if is_lora_step(art):
        state = step_checkpoint_weights(art, "cpu")
    else:
        state = read_weights(art.file(WEIGHTS))
        refuse_unrecorded_adapters(art, state)
    if not keep_head:
        state = {k: v for k, v in state.items() if not k.startswith(HEAD_PREFIX)}
    return state


def build_model(art, config: FinetuneConfig, tokenizer, labels, *, split: bool = False):
    """The model to train: base weights, optional classification head, LoRA and freezing. `split`
    (--tp/--pp): built on the meta device, the base weights checked here and read by each rank,
    part by part, when it materialises its share."""
    from llmkit.model.classifier import HEAD_PREFIX, SequenceClassifier
    from llmkit.finetune.lora import apply_lora, freeze
    from llmkit.model.io import WEIGHTS, check_shapes, read_model_config, refuse_a_config_its_weights_do_not_fit, stored_shapes, tied_names
    from llmkit.model.averaging import is_lora_step
    from llmkit.model.presets import build_model as build_lm
    from llmkit.model.records import read_task

    model_config = read_model_config(art.path)
    lora_step = is_lora_step(art)  # (its adapters alone: checked against its base as it is read)
    if split and lora_step:
        raise UserError(f"{art.path} is a LoRA step checkpoint (its adapters only), which --tp/--pp cannot read a part at a "
                        "time; fine-tune from it without them")
    if not lora_step:
        refuse_a_config_its_weights_do_not_fit(model_config, art.path / WEIGHTS)  # (before a model of its size is built)
    if config.dropout is not None:
        model_config.dropout = config.dropout
    elif config.task == "dpo":  # (TRL's disable_dropout: the policy's log-probabilities as the reference's were scored)
        model_config.dropout = 0.0
    if tokenizer.vocab_size > model_config.vocab_size:
        raise UserError(
            f"the checkpoint's tokenizer has {tokenizer.vocab_size} tokens but its model only {model_config.vocab_size} "
            "embeddings; the checkpoint is inconsistent, re-import or rebuild it"
        )
    if config.task != "classify" and model_config.objective != "clm":
        raise UserError(
            f"{art.path} is a masked language model (objective mlm), which cannot generate; use --task classify, "
            f"or fine-tune a causal (clm) checkpoint for --task {config.task}"
        )
    base_task = read_task(art)
    same_head = (config.task == "classify" and base_task is not None and base_task.is_classifier
                 and base_task.labels == (labels.names if labels else None))
    torch.manual_seed(config.seed)  # the head and the adapters: identical on every rank
    if split:  # sft only: a classifier head or LoRA adapters are refused under --tp/--pp
        with torch.device("meta"):
            model = build_lm(model_config)
        stored = stored_shapes(art.file(WEIGHTS))  # names and shapes from the header; each rank reads its part later
        refuse_unrecorded_adapters(art, stored)
        check_shapes(model, stored, art.path / WEIGHTS)
        missing = set(model.state_dict()) - set(stored) - tied_names(model)
        if missing:
            raise UserError(f"{art.path} weights do not match its model_config.json (missing {sorted(missing)[:3]}); "
                            "rebuild the checkpoint")
        frozen = freeze(model, config.freeze) if config.freeze else []
        return model, model_config, [], frozen
    state = load_base_state(art, keep_head=same_head)
    model = build_lm(model_config)
    if config.task == "classify":
        model = SequenceClassifier(model, len(labels.names))
    check_shapes(model, state, art.path / WEIGHTS)
    missing, unexpected = model.load_state_dict(state, strict=False)
    # A tied output head is stored once (as the embedding); a new classifier head starts fresh.
    aliases = tied_names(model)
    missing = [k for k in missing if k not in aliases and not (k.startswith(HEAD_PREFIX) and not same_head)]
    if missing or unexpected:
        raise UserError(f"{art.path} weights do not match its model_config.json (missing {missing[:3]}, unexpected {unexpected[:3]})")
    adapted: list[str] = []
    if config.lora_rank:
        adapted = apply_lora(model, config.lora_targets, config.lora_rank, config.lora_scale_alpha, config.lora_dropout)
        if config.task == "classify":
            for param in model.classifier.parameters():
                param.requires_grad_(True)
    frozen = freeze(model, config.freeze) if config.freeze else []
    return model, model_config, adapted, frozen


class ClassifyLoss:
    """Cross-entropy on the labels; during validation it also keeps each sample's prediction."""

    mean_over = "examples"  # batches (inputs, attention mask, labels, sample indices): one label each

    def __init__(self):
        self.by_sample: dict[int, tuple[int, int]] = {}  # sample index -> (predicted, gold)

    def __call__(self, model, batch):
        x, mask, labels, indices = batch
        logits, loss = model(x, labels, attention_mask=mask)
        if not torch.is_grad_enabled():
            for k, p, g in zip(indices.tolist(), logits.argmax(dim=-1).tolist(), labels.tolist()):
                self.by_sample[k] = (p, g)
        return loss


def sft_loss(model, batch):
    """Mean next-token cross-entropy over the response tokens (prompt targets are IGNORE_INDEX)."""
    inputs, targets = batch
    return model(inputs, targets, return_logits=False)[1]


sft_loss.mean_over = "tokens"  # batches (inputs, targets with IGNORE_INDEX), the loss a mean over target tokens


def confusion_scores(confusion) -> dict[str, float]:
    """Accuracy and macro F1 of the validation predictions (llmkit.scores: eval's own, so `llmkit eval`
    of the same predictions reproduces `val_f1` exactly, tested)."""
    from llmkit.scores import accuracy_and_macro_f1

    accuracy, f1 = accuracy_and_macro_f1(confusion.double().cpu().numpy())
    return {"val_accuracy": accuracy, "val_f1": f1}


class ScoringTrainer(Trainer):
    """The shared loop, plus scores of each validation beside its loss (val_metrics.jsonl), made from
    what the loss kept of each validation sample (`loss_fn.by_sample`)."""

    def __init__(self, *args, loss_fn, **kwargs):
        super().__init__(*args, loss_fn=loss_fn, **kwargs)
        self.collector = loss_fn
        self.step_done = self.start_step
        if self.info.is_main:
            from llmkit.train.metrics import keep_steps_up_to

            keep_steps_up_to(self.run_dir / "val_metrics.jsonl", self.start_step)  # as metrics.jsonl, on resume

    def train_step(self, step: int):
        result = super().train_step(step)
        self.step_done = step + 1
        return result

    def own_samples(self) -> list[tuple[int, Any]]:
        """What the loss kept of the samples this rank validated as its own (not a spare forward's repeat)."""
        return [(k, kept) for k, kept in self.collector.by_sample.items() if self.engine.validates(k, self.settings.micro_batch)]

    def scores(self) -> tuple[dict[str, float], str]:
        """Collective: the validation's scores, and how they are said."""
        raise NotImplementedError

    def evaluate(self):
        self.collector.by_sample.clear()
        loss = super().evaluate()
        if loss is None:
            return None
        scores, said = self.scores()
        self.last_val_scores = scores  # the manifest's stats carry the latest figures (and a resumed run's)
        if self.info.is_main:
            from llmkit.console import err

            record = dict(step=self.step_done, val_loss=loss, **scores)
            with (self.run_dir / "val_metrics.jsonl").open("a", encoding="utf-8") as handle:
                handle.write(json.dumps(record) + "\n")
            err.print(f"step {self.step_done} validation: {said}", soft_wrap=True)
        return loss


class ClassifyTrainer(ScoringTrainer):
    """Validation accuracy and macro F1 after each validation loss."""

    def __init__(self, *args, labels, **kwargs):
        super().__init__(*args, **kwargs)
        self.labels, self.num_labels = labels, len(labels.names)

    def scores(self) -> tuple[dict[str, float], str]:
        confusion = torch.zeros(self.num_labels, self.num_labels, dtype=torch.float64, device=self.device)
        for _, (p, g) in self.own_samples():
            confusion[g, p] += 1
        confusion = dist_utils.all_reduce_sum(confusion, self.info)
        scores = confusion_scores(confusion.cpu())
        return scores, (f"accuracy {scores['val_accuracy']:.4f}, macro F1 {scores['val_f1']:.4f}"
                        f"{self._one_class(confusion)}")

    def _one_class(self, confusion: torch.Tensor) -> str:
        """Said where every prediction is one class: the accuracy is then that class's share, not skill."""
        from llmkit.scores import one_class_answer

        said = one_class_answer(confusion.cpu().numpy(), self.labels.names)
        return f" ({said})" if said else ""


class PreferenceTrainer(ScoringTrainer):
    """--task dpo: after each validation loss, how often the chosen reply earns the higher reward, and
    the rewards' mean margin (TRL's rewards/accuracies and rewards/margins)."""

    def scores(self) -> tuple[dict[str, float], str]:
        from llmkit.finetune.preference import reward_scores

        rewards = torch.zeros(self.val_size, 3, dtype=torch.float64, device=self.device)  # chosen, rejected, scored here
        for k, (chosen, rejected) in self.own_samples():
            rewards[k] = torch.tensor([chosen, rejected, 1.0], dtype=torch.float64)
        rewards = dist_utils.all_reduce_sum(rewards, self.info).cpu()  # (each sample's row from one rank: exact)
        scores = reward_scores(rewards[rewards[:, 2] > 0, :2])
        return scores, (f"reward accuracy {scores['val_reward_accuracy']:.4f}, margin {scores['val_reward_margin']:.4f} "
                        f"(chosen {scores['val_chosen_reward']:.4f}, rejected {scores['val_rejected_reward']:.4f})")


def task_record(config: FinetuneConfig, template: dict | None, labels, model, adapted: list[str], merged: bool,
                seq_len: int) -> TaskRecord:
    from llmkit.model.classifier import head_spec

    record = TaskRecord(task=config.task, template=template)
    if labels is not None:
        record.labels, record.label_values, record.head = labels.names, labels.original, head_spec(model)
        record.max_tokens = seq_len  # eval cuts texts where training did, not at the context length
        record.text_field, record.label_field = config.text_field, config.label_field  # (eval reads them so by default)
    if adapted:
        record.lora = LoraRecord(rank=config.lora_rank, alpha=config.lora_scale_alpha, targets=config.lora_targets,
                                 layers=len(adapted), merged=merged)
    return record


# -- one process's work ------------------------------------------------------------------------------


def _train(config: dict, out: str, resume: bool, checkpoint: str, data: str) -> None:
    """One process's work (the only one, or one torchrun worker)."""
    from llmkit.data.tokenizer import copy_tokenizer_files, load_tokenizer
    from llmkit.model.adapters import merge_state_dict
    from llmkit.model.io import TOKENIZER_DIR, WEIGHTS, read_model_config
    from llmkit.model.records import TASK_FILE, read_task
    from llmkit.runtime import seed_everything
    from llmkit.train.loop import ArtifactSpec, LoopSettings

    config = FinetuneConfig.rebuild(**config)  # (every option, from launch.json)
    art = artifacts.load(checkpoint, kind="checkpoint")
    out, data = Path(out), Path(data)
    with worker_process(config.devices) as info:
        seed_everything(config.seed)
        tokenizer_dir = art.path / TOKENIZER_DIR
        tokenizer = load_tokenizer(tokenizer_dir)
        base_template = getattr(read_task(art), "template", None)
        if isinstance(base_template, dict) and isinstance(base_template.get("jinja"), str):
            # a fine-tune in the model's own chat template (imported again since: task.json keeps it, not the tokenizer)
            tokenizer.own_chat_template = base_template["jinja"]
        seq_len = _seq_len(config, read_model_config(art.path).context_length)

        base_task = read_task(art)
        known = [_saved_label_order(out) if resume else None,
                 base_task.labels if base_task is not None and base_task.is_classifier else None]
        prepared = _examples(config, data, tokenizer, seq_len, info.is_main, known_orders=known)
        data_stats = prepared.data_stats()
        template, labels, loss_fn = prepared.template, prepared.labels, prepared.loss_fn
        train_examples, val_examples = prepared.train_examples, prepared.val_examples
        train_batches, val_batches = prepared.train_batches, prepared.val_batches

        split = (info.layout is not None and info.layout.model_parallel and config.task == "sft" and not config.lora_rank)
        model, model_config, adapted, frozen = build_model(art, config, tokenizer, labels, split=split)
        if info.is_main and base_task is not None and base_task.is_classifier and not (
                config.task == "classify" and base_task.labels == labels.names):  # (the docs said so; the run did not)
            from llmkit.console import note

            why = {"sft": "an SFT run generates with the language model's own head",
                   "dpo": "a preference run scores replies with the language model's own head"}.get(
                config.task, "this run's classes are others, in another order or number")
            note(f"{art.path} is a classifier of {len(base_task.labels)} classes ({', '.join(base_task.labels[:4])}"
                 f"{', ...' if len(base_task.labels) > 4 else ''}); its head is left out ({why}): the layers under it are "
                 "what this run starts from")
        trainable, total, adapters = _trained_parameters(model, model_config, config, frozen, train_examples, noted=info.is_main)

        world = info.world_size
        global_batch = config.batch_size
        if info.layout is not None:  # the model's own limits first: a batch split cannot mend them
            check_model(model_config, info.layout, seq_len)
        micro_batch, accumulation = _split_batch(config, info.batch_ways)
        max_steps = config.max_steps or max(1, math.ceil(config.epochs * len(train_examples) / global_batch))
        default_warmup = min(50, max_steps // 20)
        warmup = config.optim.warmup_steps if config.optim.warmup_steps is not None else default_warmup
        val_size = min(len(val_examples), config.eval_examples)
        settings = LoopSettings.for_stage(
            config, max_steps=max_steps, global_batch=global_batch, micro_batch=micro_batch,
            tokens_per_sample=seq_len, warmup_steps=warmup, lr=config.peak_lr, batch_flag="--batch-size",
            longer="--max-steps above {step}" if config.max_steps is not None else "more --epochs (or --max-steps above {step})",
        )
        scaling = config.lora_scale_alpha / config.lora_rank if adapted else None
        run_dir = out.resolve()

        def add_files(directory: Path) -> None:
            directory = Path(directory)
            copy_tokenizer_files(tokenizer_dir, directory / "tokenizer")
            final = directory.resolve() == run_dir  # (its weights merged: ArtifactSpec.finished_weights)
            task_record(config, template, labels, model, adapted, merged=final, seq_len=seq_len).write(directory)

        val_digest = ft_data.file_digest(Path(config.val_data), validation=True) if config.val_data else None
        spec = ArtifactSpec(
            config=config.hashed_with(ft_data.file_digest(data), val_digest),
            seed=config.seed,
            inputs=[("base", art)],
            stats=CheckpointStats(
                task=config.task, params=total - adapters, trainable_params=trainable, flops_per_token=model.flops_per_token(seq_len),
                model=model_config.to_dict(), seq_len=seq_len, train_examples=len(train_examples),
                val_examples=len(val_examples), val_scored=min(len(val_examples), config.eval_examples) if val_examples else None,
                epochs=max_steps * global_batch / len(train_examples), max_steps=max_steps,
                lora_layers=len(adapted), frozen_params=total - trainable, labels=labels.names if labels else None,
                **data_stats,
            ),
            runtime={**runtime_record(config, info, micro_batch, accumulation),
                     **({"examples_sha256": ft_data.examples_digest(_encoded(train_examples))} if config.task != "classify" else {})},
            add_files=add_files,
            file_names=["tokenizer", TASK_FILE],
            final_weights_trainable=not adapted,
            steps_keep_trainable_only=bool(adapted),
            finished_weights=(lambda state: merge_state_dict(state, scaling)) if adapted else (lambda state: state),
            # (what a default means: the same as typing it, and shown as such in a resume's refusal;
            # --lr's and --lora-alpha's follow --lora-rank, which a saved run may have had otherwise)
            unset_means={"seq_len": model_config.context_length, "warmup_steps": default_warmup,
                         "lr": lambda options: FinetuneConfig.default_lr_for(options.get("lora_rank")),
                         "lora_alpha": lambda options: 2.0 * (options.get("lora_rank") or 0)},
        )
        common = dict(info=info, run_dir=out, batches=train_batches, spec=spec, val_batches=val_batches,
                      val_size=val_size, resume=resume, weights=art.file(WEIGHTS) if split else None)
        if config.task == "classify":
            trainer = ClassifyTrainer(model, settings, loss_fn=loss_fn, labels=labels, **common)
        elif config.task == "dpo":
            from llmkit.finetune.preference import reference_log_probs
            from llmkit.train.options import resolve_precision

            # the starting model's scores, before the trainer loads a resumed run's weights
            reference_log_probs(model.to(info.device), (train_examples, prepared.val_scored), info,
                                resolve_precision(config.numerics.precision, info.device.type))
            trainer = PreferenceTrainer(model, settings, loss_fn=loss_fn, **common)
        else:
            trainer = Trainer(model, settings, loss_fn=loss_fn, **common)
        if info.is_main:  # after the Trainer, so that a resume that cannot start says so first
            from llmkit.console import err

            how = f"LoRA rank {config.lora_rank} on {len(adapted)} layers" if adapted else "full fine-tuning"
            layout_note = f" ({info.layout.describe()})" if info.layout is not None and info.layout.model_parallel else ""
            err.print(
                f"finetune {config.task} ({how}): {trainable:,} of {total:,} parameters trainable "
                f"({100 * trainable / total:.2f}%{f'; the adapters fold into the {total - adapters:,} of the model' if adapters else ''}); {len(train_examples)} examples, {max_steps} step{'' if max_steps == 1 else 's'} x {global_batch}, "
                f"lr {config.peak_lr:g}, micro-batch {micro_batch} on {world} process{'' if world == 1 else 'es'}"
                f"{layout_note}{trainer.gradient_note}",
                soft_wrap=True,
            )
            if labels is not None:
                err.print(_classes_line(data_stats, len(prepared.val_scored) < len(val_examples)), soft_wrap=True)
            if trainer.start_step == 0:  # (once everything is checked: a refusal stays one line)
                _note_thin_data(config, len(train_examples), len(val_examples))
                _note_validation(config, data, len(val_examples))
        trainer.run()


def _encoded(examples: list) -> list:
    """The encoded sequences of SFT examples, or of preference pairs' replies (chosen, then rejected)."""
    return [reply for example in examples for reply in getattr(example, "replies", (example,))]


def _trained_parameters(model, model_config, config: FinetuneConfig, frozen: list[str], train_examples: list, *,
                        noted: bool) -> tuple[int, int, int]:
    """(trainable, total, LoRA adapters') parameter counts of the model built for the run, once
    the data's token ids are known to fit its embeddings and something is left to train; the
    main process (`noted`) says what --freeze also froze through a tie."""
    from llmkit.finetune.lora import count_parameters, tied_to

    top_id = max((max(e.ids) for e in train_examples), default=0)
    if top_id >= model_config.vocab_size:
        raise UserError(f"the data encodes to token id {top_id} but the model has {model_config.vocab_size} embeddings; use the checkpoint's own tokenizer")
    trainable, total = count_parameters(model)
    also_frozen = tied_to(model, frozen) if frozen else []
    if also_frozen and noted:
        from llmkit.console import note

        note(f"--freeze {','.join(config.freeze)} also freezes {', '.join(also_frozen)}: the model ties them (one tensor)")
    if trainable == 0:
        raise UserError("--freeze leaves no parameter to train; freeze fewer groups")
    # The artifact holds the merged model: its parameters are the base's (adapters fold into them).
    adapters = sum(p.numel() for name, p in model.named_parameters() if ".lora_" in name)
    return trainable, total, adapters


@dataclass
class _Prepared:
    """The run's examples and batches, and what task.json records of how they were made."""

    template: dict | None
    labels: Any
    train_examples: list
    val_examples: list
    train_batches: Any
    val_batches: Any
    loss_fn: Any
    val_scored: list  # the validation examples each validation scores (--eval-examples)

    def data_stats(self) -> dict[str, Any]:
        """The stats of how the records became examples, and a classifier's classes."""
        stats: dict[str, Any] = {"examples": {name: examples.counts for name, examples in
                                              (("training", self.train_examples), ("validation", self.val_examples))
                                              if hasattr(examples, "counts")}}
        if self.labels is not None:
            stats["class_counts"] = {"training": ft_data.class_counts(self.train_examples, self.labels)}
            if self.val_scored:  # (the examples each validation scores: those val_accuracy is of, --eval-examples)
                scored = ft_data.class_counts(self.val_scored, self.labels)
                stats["class_counts"]["validation"] = scored
                commonest = max(stats["class_counts"]["training"].items(), key=lambda item: item[1])[0]  # (the first of a tie)
                stats["val_majority_accuracy"] = scored[commonest] / len(self.val_scored)
        return stats


def _classes_line(stats: dict[str, Any], subset: bool, shown: int = 6) -> str:
    """The examples of each class, in training and validation, and what always answering the
    commonest class would score: the accuracy the run's is to be read against."""
    counts = stats["class_counts"]

    def listed(by_class: dict[str, int]) -> str:
        named = [f"{name} {count:,}" for name, count in by_class.items()]
        return ", ".join(named[:shown]) + (f", ... ({len(named)} classes)" if len(named) > shown else "")

    line = f"classes in training: {listed(counts['training'])}"
    if "validation" in counts:
        commonest = max(counts["training"].items(), key=lambda item: item[1])[0]
        where = f"in the {sum(counts['validation'].values()):,} validation examples scored" if subset else "in validation"
        line += (f"; {where}: {listed(counts['validation'])} (always answering training's commonest class, "
                 f"{commonest!r}, scores accuracy {stats['val_majority_accuracy']:.4f})")
    return line


def _note_thin_data(config, train: int, val: int) -> None:
    """Said before training: no validation at all (pretrain says so too), or a batch larger than the
    training examples (each step then reads them several times, unsaid)."""
    from llmkit.console import note

    if val == 0 and config.checkpoints.eval_every > 0 and config.val_data is None:
        cause = ("--val-fraction 0" if not config.val_fraction else
                 f"--val-fraction {config.val_fraction:g} holds back no example of so few")
        note(f"{cause} and no --val-data: the run does not validate, whatever --eval-every {config.checkpoints.eval_every} says")
    if train < config.batch_size:
        note(f"{train} training example(s), fewer than --batch-size {config.batch_size}: each step reads them about "
             f"{config.batch_size / train:.1f} times; lower --batch-size, or give more --data")


def _saved_label_order(run_dir: Path) -> list[str] | None:
    """The classes, in head order, of the run being resumed (its newest checkpoint's task.json)."""
    from llmkit.model.records import read_task
    from llmkit.train import checkpoint as ckpt

    for folder in (run_dir, ckpt.latest_checkpoint(run_dir)):
        if folder is not None and (folder / artifacts.MANIFEST).is_file():
            try:
                task = read_task(artifacts.load(folder, kind="checkpoint"))
            except UserError:  # (a damaged record: the resume's own checks name it)
                return None
            return task.labels if task is not None else None
    return None


def _in_a_known_order(labels, known: list[list[str] | None]):
    """The classes in the head order a resumed run, or a classifier base, has for the same classes: a
    run saved while digit-string labels sorted as text ("1", "10", "2") resumed with them sorted as
    numbers, its head's rows read as other classes, unsaid (2026-12-07); a base's head was dropped."""
    from llmkit.model.records import Labels

    for names in known:
        if names is not None and names != labels.names and sorted(names) == sorted(labels.names):
            value_of = dict(zip(labels.names, labels.original))
            return Labels(names=list(names), original=[value_of[name] for name in names])
    return labels


def _examples(config: FinetuneConfig, data: Path, tokenizer, seq_len: int, is_main: bool,
              known_orders: list[list[str] | None] = ()) -> _Prepared:
    """--data (and --val-data, or its held-out share) read, checked and encoded for the task."""
    from llmkit.data.templates import chat_format_for, check_tokenizer, encode_example, resolve_template

    records, places = ft_data.read_records(data)
    first = (records[0], places[0]) if records else None  # (the split may hold it out: its error named a later line)
    if config.val_data:
        val_records, val_places = ft_data.read_records(Path(config.val_data), validation=True)
    else:
        every_record, every_place = records, places
        kept, held = ft_data.split_validation(len(records), config.val_fraction, config.seed)
        records, places = [every_record[i] for i in kept], every_place.pick(kept)
        val_records, val_places = [every_record[i] for i in held], every_place.pick(held)
    template, labels = None, None
    if config.task in ("sft", "dpo"):
        template = resolve_template(config.template)
        if template["type"] == "chat":
            template = chat_format_for(tokenizer)
        check_tokenizer(template, tokenizer)
        # task.json names the tokens this tokenizer really has (an imported GPT-2 has <|endoftext|>, no <|bos|>)
        template = {**template, **{name: tokenizer.hf.id_to_token(getattr(tokenizer, f"{name}_id"))
                                   for name in ("bos", "eos") if name in template}}
        if config.task == "dpo":
            return _preference_examples(config, template, tokenizer, seq_len, is_main, records, places, val_records,
                                        val_places, first)
        if first is not None:  # a file whose every record is wrong the same way is named at its first line
            encode_example(template, first[0], tokenizer, first[1])
        fix = ("give --val-data records that keep a response" if config.val_data is not None
               else "hold out more of --data (a larger --val-fraction), or give --val-data")
        train_examples, val_examples = _encoded_splits(
            lambda rows, name, where: ft_data.sft_examples(rows, template, tokenizer, seq_len, config.truncate, name, is_main,
                                                           where),
            config, is_main, (records, places), (val_records, val_places), "example(s)", fix)
        pad_id = tokenizer.pad_id
        train_batches = ft_data.SFTBatches(train_examples, pad_id=pad_id, seed=config.seed)
        scored = _scored_subset(val_examples, config.eval_examples)
        val_batches = ft_data.SFTBatches(scored, pad_id=pad_id, seed=config.seed, shuffle=False) if val_examples else None
        loss_fn = sft_loss
        scored = scored if val_examples else []
    else:
        label_field = config.label_field or "label"
        if not config.val_data:  # the data's own faults first, then what the held-out draw left to train on
            ft_data.class_texts(every_record, "the data", every_place, config.text_field)
            ft_data.label_set(every_record, "the data", every_place, label_field)
            ft_data.check_held_out_labels(every_record, records, config.val_fraction, every_place, places, label_field)
        labels = _in_a_known_order(ft_data.label_set(records, "training", places, label_field), list(known_orders))
        fields = dict(text_field=config.text_field, label_field=label_field)
        train_examples = ft_data.classify_examples(records, labels, tokenizer, seq_len, config.truncate, "training",
                                                   is_main, places, **fields)
        val_examples = ft_data.classify_examples(val_records, labels, tokenizer, seq_len, config.truncate, "validation",
                                                 is_main, val_places, **fields) if val_records else []
        ft_data.check_held_apart(train_examples, val_examples, given=config.val_data is not None, verbose=is_main)
        train_batches = ft_data.ClassifyBatches(train_examples, pad_id=tokenizer.pad_id, seed=config.seed)
        scored = _scored_subset(val_examples, config.eval_examples)
        val_batches = ft_data.ClassifyBatches(scored, pad_id=tokenizer.pad_id, seed=config.seed, shuffle=False) if val_examples else None
        loss_fn = ClassifyLoss()
        scored = scored if val_examples else []
    return _Prepared(template, labels, train_examples, val_examples, train_batches, val_batches, loss_fn, scored)


def _encoded_splits(encode, config: FinetuneConfig, is_main: bool, training: tuple, validation: tuple, what: str,
                    fix: str) -> tuple[list, list]:
    """The training and validation records encoded (`encode(records, name, places)`), held apart, and a
    validation that encoding emptied said (the run then has no validation loss)."""
    (records, places), (val_records, val_places) = training, validation
    train_examples = encode(records, "training", places)
    val_examples = encode(val_records, "validation", val_places) if val_records else []
    ft_data.check_held_apart(train_examples, val_examples, given=config.val_data is not None, verbose=is_main)
    if val_records and not val_examples and is_main:
        from llmkit.console import note

        note(f"none of the {len(val_records)} validation {what} is left (each left out above): the run has no "
             f"validation loss; {fix}")
    return train_examples, val_examples


def _preference_examples(config: FinetuneConfig, template: dict, tokenizer, seq_len: int, is_main: bool, records: list,
                         places, val_records: list, val_places, first) -> _Prepared:
    """--task dpo: the records as preference pairs, and their batches and loss."""
    from llmkit.data.preferences import sft_records
    from llmkit.finetune import preference

    if first is not None:  # a file whose every record is wrong the same way is named at its first line
        sft_records(first[0], template, first[1])
    train_pairs, val_pairs = _encoded_splits(
        lambda rows, name, where: preference.preference_pairs(rows, template, tokenizer, seq_len, config.truncate, name,
                                                              is_main, where),
        config, is_main, (records, places), (val_records, val_places), "preference pair(s)",
        "give --val-data pairs of two different replies")
    scored = _scored_subset(val_pairs, config.eval_examples)
    train_batches = preference.PreferenceBatches(train_pairs, pad_id=tokenizer.pad_id, seed=config.seed)
    val_batches = preference.PreferenceBatches(scored, pad_id=tokenizer.pad_id, seed=config.seed,
                                               shuffle=False) if val_pairs else None
    return _Prepared(template, None, train_pairs, val_pairs, train_batches, val_batches,
                     preference.PreferenceLoss(config.beta), scored if val_pairs else [])


def _note_validation(config: FinetuneConfig, data: Path, held_out: int) -> None:
    """What validation reads that a user would not guess: a subset (--eval-examples), or not the
    --data folder's own validation file. Said with the other notes, after every refusal."""
    from llmkit.console import note

    if held_out > config.eval_examples:
        note(f"validation scores {config.eval_examples} of the {held_out} validation examples (--eval-examples "
             f"{config.eval_examples}), drawn at random once, the same ones for every --seed"
             + ("" if config.val_data else " among those --seed held out of --data (--val-data validates every seed on one set)")
             + "; raise --eval-examples to score them all")
    beside = next((name for name in ft_data.VALIDATION_FILES if data.is_dir() and (data / name).is_file()), None)
    if beside is not None and not config.val_data:  # (a folder's validation file was passed over unsaid)
        note(f"{data} holds {beside}, which this run does not read: it holds out --val-fraction {config.val_fraction} of "
             f"{ft_data.data_file(data).name} instead; pass --val-data {data} to validate on it")


VAL_SUBSET_SEED = 0  # which held-out examples --eval-examples scores: the same ones whatever --seed


def _scored_subset(examples: list, most: int) -> list:
    """At most `most` of the validation examples, drawn once and kept in their order: the first
    `most` in file order were scored, so a file sorted by label or source gave a biased figure."""
    if len(examples) <= most:
        return examples
    import numpy as np

    chosen = np.sort(np.random.default_rng(VAL_SUBSET_SEED).choice(len(examples), size=most, replace=False))
    return [examples[i] for i in chosen]

