"""`llmkit pretrain`: train a model from scratch on a tokens artifact.

    pretrain(tokens, out, PretrainConfig.build(model="tiny", max_steps=500)) -> out

The run directory OUT holds metrics.jsonl and checkpoints/step_XXXXXXX/ (each a checkpoint
artifact) while training; at the end OUT itself becomes the final checkpoint artifact.
With several processes (--gpus N, --nproc N, --nnodes) the function relaunches itself under
torchrun (llmkit.train.launch) and every worker runs `_train`.
"""

from __future__ import annotations

import contextlib

import math
from pathlib import Path

from llmkit import artifacts
from llmkit.errors import UsageError, UserError
from llmkit.pretrain.config import PretrainConfig
from llmkit.train.options import refuse_unread_model_settings
from llmkit.train.layout import check_model
from llmkit.train.launch import (keep_recorded_settings, launch, note_a_smaller_micro_batch, refuse_resume_with_force, planned_split, planned_world, runtime_record, split_batch,
                                 worker_process)

VAL_WINDOWS_SEED = 0  # the validation windows' draw: one set (and for an MLM one draw of masks) for every --seed (_open_data)


def pretrain(tokens: Path | str, out: Path | str, config: PretrainConfig, *, init_from: Path | str | None = None,
             resume: bool = False, force: bool = False) -> Path:
    """Train and return the run directory, which is then a checkpoint artifact. With `init_from`
    (a checkpoint) training continues from its weights and model: continued pretraining."""
    refuse_resume_with_force(resume, force)
    tokens = Path(tokens)
    if config.max_steps is not None and config.max_tokens is not None:  # (a --config file's pair: config.resolve)
        raise UsageError("give --max-steps or --max-tokens, not both")
    tokens_art = artifacts.load(tokens, kind="tokens")
    inputs = {"tokens": str(tokens.resolve())}
    init = artifacts.load(init_from, kind="checkpoint") if init_from is not None else None
    if init is not None:
        _check_init(init, tokens_art, config)
        inputs["init_from"] = str(init.path.resolve())
    _check_before_launch(config, tokens_art, init)
    config = keep_recorded_settings(config, Path(out), resume=resume, lengths=("max_steps", "max_tokens"),
                                    length_left_out=config.max_steps is None and config.max_tokens is None)
    tokenizer = tokens_art.recorded_input("tokenizer")  # recorded as the run's input too: -o must spare it
    # (the inputs as typed first: -o's refusal names the one it meets, as every stage's does)
    return launch(_train, Path(out), config, devices=config.devices, resume=resume, force=force, inputs=inputs,
                  reads=[tokens, init_from, tokenizer.path if tokenizer else None])


def _check_init(init, tokens_art, config: PretrainConfig) -> None:
    """Continued pretraining keeps the checkpoint's model and needs the tokenizer the tokens were made with."""
    from llmkit.model.records import read_task

    given = ["model"] if config.was_given("model") else []  # (a typed --model tiny is the default by value)
    given += [name for name, value in config.architecture.overrides().items() if value is not None and name != "dropout"]
    if given:
        flags = ", ".join("--" + name.replace("_", "-") for name in given)
        raise UsageError(f"--init-from takes the model from {init.path}; leave out {flags}")
    task = read_task(init)
    if task is not None and task.is_classifier:
        base = init.recorded_input("base")
        raise UserError(f"{init.path} is a classifier; --init-from needs a language-model checkpoint"
                        + (f": give the one it was fine-tuned from ({base.path})" if base else ""))
    from llmkit.data.tokenizer import same_tokenizer

    if not same_tokenizer(init.path, tokens_art.path):
        raise UserError(f"{init.path} has another tokenizer than {tokens_art.path} was encoded with; tokenize the corpus "
                        f"with --tokenizer {init.path} (a checkpoint's tokenizer serves)")


def _check_before_launch(config: PretrainConfig, tokens_art, init) -> None:
    """What every process would refuse (the model under --tp/--pp, the batch split, the data),
    refused once before any starts: under torchrun a mistake cost the start of N processes, 10-15 s
    on a CPU (launch.planned_split). The processes check again, as they work from what they read."""
    from llmkit.data.tokenizer import load_tokenizer

    tokenizer = load_tokenizer(tokens_art.path / "tokenizer")
    model_config = _model_config(config, tokenizer.vocab_size, init)
    _check_mask_token(model_config, tokenizer)
    if config.document_mask and model_config.arch == "lstm":
        raise UserError("--document-mask masks attention, which an LSTM has none of; leave it out")
    seq_len = _seq_len(config, model_config, init)
    layout = planned_split(config.devices, config.checkpoints.ema, lambda layout: check_model(model_config, layout, seq_len))
    micro, _ = _split_global_batch(config, seq_len, layout.batch_ways if layout is not None else planned_world(config.devices))
    note_a_smaller_micro_batch(config, micro)
    _open_data(tokens_art, seq_len, config)
    refuse_unread_model_settings(config, model_config)


def _check_mask_token(model_config, tokenizer) -> None:
    if model_config.objective == "mlm" and tokenizer.mask_id is None:
        raise UserError("--objective mlm needs a <|mask|> token in the tokenizer; retrain it with the default special tokens")


def _model_config(config: PretrainConfig, vocab_size: int, init):
    from llmkit.model.io import WEIGHTS, read_model_config, refuse_a_config_its_weights_do_not_fit
    from llmkit.model.presets import resolve_model_config

    if init is None:
        return resolve_model_config(config.architecture.model, vocab_size=vocab_size, overrides=config.architecture.overrides())
    model_config = read_model_config(init.path)
    refuse_a_config_its_weights_do_not_fit(model_config, init.path / WEIGHTS)  # (before a model of its size is built)
    if config.architecture.dropout is not None:
        model_config.dropout = config.architecture.dropout
    return model_config


def _seq_len(config: PretrainConfig, model_config, init=None) -> int:
    seq_len = config.seq_len or model_config.context_length
    if seq_len > model_config.context_length:
        whose, fix = ((f"{init.path}'s", "lower --seq-len") if init is not None
                      else ("the model's", "lower --seq-len or raise --context-length"))
        raise UsageError(f"--seq-len {seq_len} is longer than {whose} context length {model_config.context_length}; {fix}")
    return seq_len


def _split_global_batch(config: PretrainConfig, seq_len: int, batch_ways: int) -> tuple[int, int]:
    global_batch = config.batch_tokens // seq_len
    if global_batch < 1:
        raise UsageError(f"--batch-tokens {config.batch_tokens} is smaller than one sequence of {seq_len} tokens; raise it")
    return split_batch(
        global_batch, config.devices.micro_batch, batch_ways,
        what=f"the global batch of {global_batch} sequences (--batch-tokens {config.batch_tokens} / seq_len {seq_len})",
        fix=lambda multiple: f"choose --batch-tokens as a multiple of {multiple * seq_len}",
    )


def _open_data(tokens_art, seq_len: int, config: PretrainConfig):
    """(train windows, val windows or None). A val split too short for one window is refused when
    the run validates (every validation would be skipped, unsaid); a tokens artifact made without
    one (--val-fraction 0) trains without validation, which the run notes (`_note_no_validation`)."""
    from llmkit.data.shards import TokenShards, WindowSampler, has_split

    try:
        train = WindowSampler(TokenShards.open(tokens_art, "train"), seq_len, config.seed)
    except FileNotFoundError as exc:
        raise UserError(f"tokens artifact {tokens_art.path} has no train split; rebuild it with llmkit tokenize") from exc
    if config.checkpoints.eval_every == 0 or not has_split(tokens_art, "val"):
        return train, None
    try:
        # the same windows whatever --seed: runs of other seeds validate alike (each seed scored other windows,
        # which moved the loss by as much as the seed did)
        return train, WindowSampler(TokenShards.open(tokens_art, "val"), seq_len, VAL_WINDOWS_SEED, shifting=False)
    except UserError as exc:
        raise UserError(f"{exc}, or pass --eval-every 0 to train without validation") from exc


def _note_no_validation(tokens_art, config: PretrainConfig) -> None:
    from llmkit.console import note

    note(f"{tokens_art.path} has no val split (tokenized with --val-fraction 0): the run does not validate, "
         f"whatever --eval-every {config.checkpoints.eval_every} says")


def _train(config: dict, out: str, resume: bool, tokens: str, init_from: str | None = None) -> None:
    """One process's work (the only one, or one torchrun worker)."""
    import torch

    from llmkit.data.tokenizer import copy_tokenizer_files, load_tokenizer
    from llmkit.model.io import WEIGHTS, load_weights
    from llmkit.model.presets import build_model
    from llmkit.model.records import CheckpointStats
    from llmkit.runtime import seed_everything
    from llmkit.train.loop import ArtifactSpec, LoopSettings, Trainer
    from llmkit.train.objectives import lm_loss

    config = PretrainConfig.rebuild(**config)  # (every option, from launch.json)
    tokens_art = artifacts.load(tokens, kind="tokens")
    out = Path(out)
    with worker_process(config.devices) as info:
        tokenizer_dir = tokens_art.path / "tokenizer"
        tokenizer = load_tokenizer(tokenizer_dir)
        init = artifacts.load(init_from, kind="checkpoint") if init_from else None
        model_config = _model_config(config, tokenizer.vocab_size, init)
        seq_len = _seq_len(config, model_config, init)
        _check_mask_token(model_config, tokenizer)
        world = info.world_size
        if info.layout is not None:  # the model's own limits first: a batch split cannot mend them
            check_model(model_config, info.layout, seq_len)
        micro_batch, accumulation = _split_global_batch(config, seq_len, info.batch_ways)
        global_batch = config.batch_tokens // seq_len
        max_steps = _planned_steps(config, global_batch, seq_len, noted=info.is_main, resume=resume)
        default_warmup = min(100, max_steps // 10)
        warmup = config.optim.warmup_steps if config.optim.warmup_steps is not None else default_warmup

        seed_everything(config.seed)
        train_sampler, val_sampler = _open_data(tokens_art, seq_len, config)

        train_batches, val_batches = _window_batches(train_sampler, val_sampler, tokenizer, model_config.objective, config)
        val_size = min(max(1, config.eval_tokens // seq_len), len(val_sampler)) if val_sampler is not None else 0

        torch.manual_seed(config.seed)  # identical initial weights on every rank
        # Split across ranks (--tp/--pp), the model is built on the meta device and each rank makes
        # only its part (llmkit.train.parallelize.materialize), initialised or read from --init-from's
        # file one tensor at a time: no rank holds it whole.
        split = info.layout is not None and info.layout.model_parallel
        with torch.device("meta") if split else contextlib.nullcontext():
            model = build_model(model_config)
        if init is not None and not split:
            load_weights(model, init.file(WEIGHTS))
        settings = LoopSettings.for_stage(
            config, max_steps=max_steps, global_batch=global_batch, micro_batch=micro_batch,
            tokens_per_sample=seq_len, warmup_steps=warmup, lr=config.optim.lr,
        )
        inputs = [("tokens", tokens_art)] + ([("init", init)] if init is not None else [])
        # As the tokens record it, found or not (its copy travels in tokenizer/): the fingerprint
        # must not depend on whether an ancestor is still on disk.
        tokenizer = tokens_art.recorded_input("tokenizer")
        inputs += [("tokenizer", tokenizer)] if tokenizer is not None else []
        # The token every document followed: what generation and eval condition a prompt on
        # (inference/prompts.document_start_id). Hashed, as what later stages compute depends on it.
        from llmkit.data.shards import document_start

        recorded = {**config.hashed(), "document_start": document_start(tokens_art)}
        if init is not None:  # the model is the init checkpoint's (stats.model), not the --model default's
            recorded["model"] = None
        spec = ArtifactSpec(
            config=recorded,
            seed=config.seed,
            inputs=inputs,
            stats=CheckpointStats(
                params=model.num_params(), flops_per_token=model.flops_per_token(seq_len), model=model_config.to_dict(),
                seq_len=seq_len, global_batch_sequences=global_batch, global_batch_tokens=global_batch * seq_len,
                max_steps=max_steps,
                tokenizer_fingerprint=next((i["fingerprint"] for i in tokens_art.manifest.inputs if i["role"] == "tokenizer"), None),
            ),
            # (how the text is cut into windows: a resumed run must go on cutting it so)
            runtime={**runtime_record(config, info, micro_batch, accumulation), "windows": train_sampler.GRID,
                     # what validation read: --eval-tokens in whole windows, at least one, at most the val split's
                     "val_tokens": val_size * seq_len},
            add_files=lambda directory: copy_tokenizer_files(tokenizer_dir, Path(directory) / "tokenizer"),
            file_names=["tokenizer"],
            # (an option recorded only where set means its unrecorded value where left out)
            unset_means={"seq_len": model_config.context_length, "warmup_steps": default_warmup, **config.left_out_at()},
        )
        params = model.num_params()  # before the layout splits (and unties) anything
        trainer = Trainer(
            model, settings, info=info, run_dir=out, batches=train_batches, loss_fn=lm_loss, spec=spec,
            val_batches=val_batches, val_size=val_size, resume=resume,
            weights=init.file(WEIGHTS) if init is not None and split else None,
        )
        if info.is_main:  # after the Trainer, so that a resume that cannot start says so first
            from llmkit.console import err

            layout_note = f" ({info.layout.describe()})" if info.layout.model_parallel else ""
            named = f"from {init_from}" if init_from else config.architecture.model
            units = ("GPU" if world == 1 else "GPUs") if info.device.type == "cuda" else ("CPU process" if world == 1 else "CPU processes")
            err.print(
                f"pretrain {named} ({model_config.arch}/{model_config.objective}, {params:,} parameters) "
                f"on {world} {units}{layout_note}: {max_steps} step{'' if max_steps == 1 else 's'} x "
                f"{global_batch} x {seq_len} tokens, micro-batch {micro_batch}, accumulation {accumulation}"
                f"{trainer.gradient_note}",
                soft_wrap=True,
            )
            if val_sampler is None and config.checkpoints.eval_every > 0 and trainer.start_step == 0:
                _note_no_validation(tokens_art, config)
            if len(train_sampler) < global_batch and trainer.start_step == 0:  # (each step reads the split again)
                from llmkit.console import note

                note(f"the train split holds {len(train_sampler)} window(s) of {seq_len} tokens, fewer than a step's "
                     f"{global_batch} sequences: each step reads it about {global_batch / len(train_sampler):.1f} times; "
                     "lower --batch-tokens, or tokenize more text")
        trainer.run()


def _window_batches(train_sampler, val_sampler, tokenizer, objective: str, config: PretrainConfig):
    """(train, validation or None) batches of the windows the samplers draw, masked for an MLM."""
    from llmkit.train.objectives import WindowBatches

    special = sorted(set(tokenizer.special_ids.values())) if tokenizer.special_ids else []
    data_options = dict(objective=objective, mask_id=tokenizer.mask_id, vocab_size=tokenizer.vocab_size,
                        special_ids=special, mlm_probability=config.mlm_probability,
                        document_end=tokenizer.eos_id if config.document_mask else None)
    train = WindowBatches(train_sampler, seed=config.seed, **data_options)
    val = WindowBatches(val_sampler, seed=VAL_WINDOWS_SEED + 1, **data_options) if val_sampler is not None else None
    return train, val


def _planned_steps(config: PretrainConfig, global_batch: int, seq_len: int, *, noted: bool, resume: bool) -> int:
    """The run's length in steps of `global_batch` sequences: --max-steps, or --max-tokens rounded
    up to whole steps; where a step or the length is not what was typed, the main process
    (`noted`) says what it trains instead."""
    from llmkit.console import note

    step_tokens = global_batch * seq_len
    if step_tokens != config.batch_tokens and noted:
        note(f"--batch-tokens {config.batch_tokens} is not a multiple of the sequence length {seq_len}: each step "
             f"trains on {global_batch} sequences, {step_tokens} tokens")
    if config.max_tokens is None:
        return config.max_steps or 1000
    max_steps = math.ceil(config.max_tokens / step_tokens)
    if max_steps * step_tokens != config.max_tokens and noted and not resume:
        note(f"--max-tokens {config.max_tokens} is not a whole number of steps of {step_tokens} tokens: "
             f"the run trains {max_steps} steps, {max_steps * step_tokens} tokens")
    return max_steps
