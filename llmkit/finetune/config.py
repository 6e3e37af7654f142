"""The options of `llmkit finetune` (docs/finetune.md): declared once, here."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable

from llmkit import artifacts
from llmkit.model.records import TASKS
from llmkit.options import Options, comma_list, flat_options, group, option, seed_option
from llmkit.train.options import (DEVICES_PANEL, TRAINING_PANEL, Checkpointing, Devices, Numerics, Optimization,
                                  refuse_idle_optimizer_settings, refuse_pipeline_options_without_pp)

TASK_PANEL = "Task and data"
LORA_PANEL = "LoRA and freezing"


@dataclass
class FinetuneConfig(Options):
    # one of each pair stands for the other: the one typed beats the other from a --config file (config.resolve)
    EITHER_OR = (("max_steps", "epochs"), ("val_fraction", "val_data"))
    task: str = option("sft", "sft ({prompt,response} or {messages}), classify ({text,label}) or dpo, preference pairs "
                       "({prompt,chosen,rejected}: direct preference optimization).", panel=TASK_PANEL, choices=TASKS)
    template: str = option("chat", "SFT prompt template: chat, plain, translate (source->target), summarize (document->summary) "
                           "or a JSON file.", panel=TASK_PANEL)
    text_field: str | None = option(None, "--task classify: the field holding the text (default text, else sentence; a.b: "
                                    "within object a).", flags=("--field",), panel=TASK_PANEL, hashed=False,
                                    recorded_as="config field (where given)")
    label_field: str | None = option(None, "--task classify: the field holding the label (default label).", panel=TASK_PANEL,
                                     hashed=False, recorded_as="config label_field (where given)")
    dpo_beta: float | None = option(None, "--task dpo: how far from the starting model the preferences may pull it, "
                                    "DPO's beta (default 0.1; lower lets it drift further).", panel=TASK_PANEL,
                                    range="(0, inf)", hashed=False, recorded_as="config dpo_beta (--task dpo)")
    val_data: Path | None = option(None, "Validation records, .jsonl, .csv or .parquet, or a datasets NAME[:CONFIG] (its "
                                   "validation split) (default: hold out --val-fraction of --data).", panel=TASK_PANEL,
                                   hashed=False, recorded_as="content hash (val_data_sha256)")
    val_fraction: float = option(0.05, "Share of --data held out for validation when --val-data is not given.", panel=TASK_PANEL,
                                 range="[0, 1)")
    seq_len: int | None = option(None, "Positions the model reads of an example (default: the model's context length); an SFT "
                                 "example's last token is only predicted, so it may hold one token more.", panel=TASK_PANEL,
                                 range="[1, inf)")
    truncate: bool = option(False, "Cut examples longer than --seq-len instead of failing.", flags=("--truncate/--no-truncate",), panel=TASK_PANEL)
    batch_size: int = option(32, "Examples per optimizer step, over all devices.", panel=TRAINING_PANEL, range="[1, inf)")
    max_steps: int | None = option(None, "Optimizer steps (default: --epochs over the data).", panel=TRAINING_PANEL, range="[1, inf)")
    epochs: float = option(1.0, "Passes over the training data when --max-steps is not given.", panel=TRAINING_PANEL, range="(0, inf)")
    optim: Optimization = group(
        Optimization, panel=TRAINING_PANEL, lr=None, weight_decay=0.0, beta2=0.999,
        help={"lr": "Peak learning rate (default 1e-4, or 1e-3 with LoRA).",
              "warmup_steps": "Linear warmup steps (default min(50, steps/20))."},
    )
    numerics: Numerics = group(Numerics, panel=TRAINING_PANEL)
    dropout: float | None = option(None, "Dropout while fine-tuning (default: the checkpoint's; 0 for --task dpo, as TRL's).", panel=TRAINING_PANEL, range="[0, 1)")
    checkpoints: Checkpointing = group(Checkpointing, panel=TRAINING_PANEL, eval_every=100, save_every=200)
    eval_examples: int = option(1024, "Validation examples per evaluation (at most).", panel=TRAINING_PANEL, range="[1, inf)",
                                runtime=True)
    lora_rank: int = option(0, "LoRA rank (0 = full fine-tuning).", panel=LORA_PANEL, range="[0, inf)")
    lora_alpha: float | None = option(None, "LoRA alpha; the update is scaled by alpha/rank (default 2 x rank).", panel=LORA_PANEL,
                                      range="(0, inf)")
    lora_dropout: float = option(0.0, "Dropout on the LoRA input.", panel=LORA_PANEL, range="[0, 1)")
    lora_targets: list[str] = option(
        default_factory=lambda: ["q_proj", "kv_proj", "out_proj"], panel=LORA_PANEL, parse=comma_list,
        help="Linear layers to adapt, comma-separated: names (q_proj, kv_proj, out_proj, up_proj, down_proj), globs over "
             "full names, or all.",
    )
    freeze: list[str] = option(
        default_factory=list, panel=LORA_PANEL, parse=comma_list,
        help="Parameter groups to keep fixed, comma-separated: embeddings, attention, mlp, norms, lm_head, or a name glob (blocks.0.*).",
    )
    seed: int = seed_option("Seed for the head/adapter initialisation, data order, validation split and dropout.")
    devices: Devices = group(Devices, panel=DEVICES_PANEL, micro_batch=8)

    def __post_init__(self):
        super().__post_init__()
        refuse_pipeline_options_without_pp(self.devices)
        refuse_idle_optimizer_settings(self)
        # Comma-separated lists from the command line become lists.
        self.lora_targets = [t.strip() for item in self.lora_targets for t in str(item).split(",") if t.strip()]
        self.freeze = [t.strip() for item in self.freeze for t in str(item).split(",") if t.strip()]
        if self.lora_rank and self.freeze:
            raise ValueError("--freeze picks what full fine-tuning trains; with --lora-rank only the adapters train "
                             "(--lora-targets picks them): give one of the two")
        for flag, value in (("--field", self.text_field), ("--label-field", self.label_field)):
            if value is not None and not value.strip():  # (recorded in task.json, it made a classifier no reader took)
                raise ValueError(f"{flag} needs a field name, got {value!r}")
        if self.label_field == "label":  # (the default typed: the same run, the same fingerprint)
            self.label_field = None
        self._refuse_idle(lambda name: getattr(self, name) != self.default_of(name))

    def check_given(self, given: frozenset[str]) -> None:
        self._refuse_idle(given.__contains__)  # the same, typed (or in the config file) at the default value

    def _refuse_idle(self, given: Callable[[str], bool]) -> None:
        """Options that would do nothing in this run, refused (they would be recorded, and change the
        fingerprint, for the same run): by value when built, and as given at all (check_given)."""
        lora = "sets up LoRA adapters, which only --lora-rank N adds; give a rank or leave it out (full fine-tuning)"
        idle = (("epochs", self.max_steps is not None, "sets the run's length when --max-steps is not given; give one of "
                                                       "the two"),
                ("lora_alpha", not self.lora_rank, lora), ("lora_dropout", not self.lora_rank, lora),
                ("lora_targets", not self.lora_rank, lora),
                ("val_fraction", self.val_data is not None, "holds out part of --data when no --val-data is given; give "
                                                           "one of the two"),
                ("template", self.task == "classify", "renders SFT examples; a classifier reads each text as it is: leave "
                                                      "it out"),
                ("dpo_beta", self.task != "dpo" and self.dpo_beta is not None, "weighs preference pairs (--task dpo); leave it out"),
                ("text_field", self.task != "classify" and self.text_field is not None, "name(s) a classifier's fields (--task classify); an SFT template names "
                                                   "the fields it reads: a template file (--template FILE.json)"),
                ("label_field", self.task != "classify" and self.label_field is not None, "name(s) a classifier's fields (--task classify); an SFT template names "
                                                    "the fields it reads: a template file (--template FILE.json)"))
        refused = [(name, why) for name, applies, why in idle if applies and given(name)]
        if refused:
            why = refused[0][1]
            flags = {opt.name: opt.flag for opt in flat_options(type(self))}
            raise ValueError(f"{', '.join(flags[name] for name, said in refused if said == why)} {why}")

    @property
    def peak_lr(self) -> float:
        return self.optim.lr if self.optim.lr is not None else self.default_lr

    @property
    def default_lr(self) -> float:
        return self.default_lr_for(self.lora_rank)

    @staticmethod
    def default_lr_for(lora_rank: int | None) -> float:
        """What --lr left out means: 1e-4, or 1e-3 with LoRA."""
        return 1e-3 if lora_rank else 1e-4

    DEFAULT_DPO_BETA = 0.1  # (TRL's DPOConfig.beta)

    @property
    def beta(self) -> float:
        """--dpo-beta, or what leaving it out means."""
        return self.dpo_beta if self.dpo_beta is not None else self.DEFAULT_DPO_BETA

    @property
    def lora_scale_alpha(self) -> float:
        return self.lora_alpha if self.lora_alpha is not None else 2.0 * self.lora_rank

    def hashed_with(self, data_digest: str, val_digest: str | None) -> dict[str, Any]:
        """The recorded config: the options, the data by content, a template file by name and content
        (a resume with the file edited is another run)."""
        values = self.hashed()
        values["data_sha256"] = data_digest
        values["val_data_sha256"] = val_digest
        # (where given only: the fingerprints of runs on the default fields stay those they had before the options;
        # under their flags' names, which a resume's refusal shows)
        values.update({key: value for key, value in (("field", self.text_field), ("label_field", self.label_field))
                       if value is not None})
        if self.task == "dpo":  # (its own key: sft and classify runs keep the fingerprints they had)
            values["dpo_beta"] = self.beta
        if self.template not in ("chat", "plain", "translate", "summarize"):
            values["template"] = Path(self.template).name  # the template itself is in task.json
            values["template_sha256"] = artifacts.sha256_file(Path(self.template))
        return values
