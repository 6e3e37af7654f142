"""`llmkit export`: a checkpoint artifact as a transformers model directory."""

from __future__ import annotations

import json
from pathlib import Path

from llmkit.errors import UserError
from llmkit.interop.hf_files import HF_WEIGHTS, LLMKIT_CONFIG_FILE, exported_files, torch_dtype
from llmkit.interop.hf_tokenizer import chat_template_for, post_processor_of, save_hf_tokenizer, stop_token_ids
from llmkit.model.hf_config import SpecialIds, hf_family, to_hf_config
from llmkit.model.hf_weights import to_hf_state


def export_hf(checkpoint: Path | str, out: Path | str, *, force: bool = False, dtype: str = "float32") -> Path:
    """Write a checkpoint as a transformers model directory that `AutoModelForCausalLM` and
    `AutoTokenizer.from_pretrained(out)` load offline. Returns `out`."""
    from safetensors.torch import save_file
    from transformers import GenerationConfig

    from llmkit import artifacts, outputs
    from llmkit.inference.prompts import document_start_id
    from llmkit.model.io import load_checkpoint, read_model_config
    from llmkit.model.records import read_task

    weight_dtype = torch_dtype(dtype)
    art = artifacts.load(checkpoint, kind="checkpoint")  # first: a missing or wrong input leaves no folders made for -o
    task, model_config = read_task(art), read_model_config(art.path)
    if task is not None and task.is_classifier:  # (before the model's kind: its advice, generate or a classifier, is no use here)
        try:
            hf_family(model_config)
            base = "export the checkpoint it was fine-tuned from"
        except UserError:  # (a style no transformers class computes too: the base was no way out)
            what = ("masked LM" if model_config.objective == "mlm" else model_config.arch.upper() if model_config.arch != "gpt"
                    else f"model ({model_config.norm}, {model_config.pos}, {model_config.activation})")
            base = f"nor does the {what} it was fine-tuned from; use it with llmkit eval"
        raise UserError(
            f"{art.path} is a classification checkpoint; its head has a bias that transformers' "
            f"*ForSequenceClassification `score` layer lacks, so it does not export; {base}"
        )
    family = hf_family(model_config)  # refuse before loading any weights
    out = outputs.check_output(out, force, inputs=[checkpoint], writes="export")
    loaded = load_checkpoint(art.path)
    config, tok = loaded.config, loaded.tokenizer
    template = chat_template_for(task) or tok.own_chat_template  # (load_checkpoint drops the latter for a fine-tune)
    if template is None and task is not None and isinstance(task.template, dict):
        from llmkit.console import note

        note(f"{art.path}'s prompt template ({task.template.get('name') or 'from a file'}) fills more than one field a "
             "side, which a chat template cannot take from messages: the export has no chat template (the template is "
             f"in {LLMKIT_CONFIG_FILE}'s task); build its prompts as fine-tuning did")
    special = SpecialIds(bos=tok.bos_id, eos=tok.eos_id, pad=tok.pad_id)
    hf_config = to_hf_config(config, special)
    hf_config.dtype = dtype
    state = to_hf_state(loaded.model.state_dict(), config, weight_dtype)
    with outputs.atomic_directory(out, force=force, inputs=[checkpoint], writes="export") as tmp:
        hf_config.save_pretrained(tmp)
        if family == "llama":  # transformers 4.x reads the RoPE base from the top level; v5 accepts both
            _update_json(tmp / "config.json", rope_theta=float(config.rope_theta))
        save_file(state, str(tmp / HF_WEIGHTS), metadata={"format": "pt"})
        stops = stop_token_ids(tok)
        # rows past the tokenizer's (the vocabulary rounded up) name no token: llmkit never picks them
        unnamed = list(range(tok.vocab_size, config.vocab_size))
        GenerationConfig(
            bos_token_id=special.bos, eos_token_id=stops if len(stops) > 1 else stops[0], pad_token_id=special.pad,
            **({"suppress_tokens": unnamed} if unnamed else {}),
            # how its makers sample it, as its import read it (sampling.json): back where transformers reads it
            **(loaded.sampling.as_generation_config() if loaded.sampling is not None else {}),
        ).save_pretrained(tmp)
        start_id = document_start_id(tok, art, task)
        save_hf_tokenizer(tok, tmp, model_max_length=config.context_length, chat_template=template, start_id=start_id)
        provenance = {"model_config": config.to_dict(), "checkpoint_fingerprint": art.fingerprint,
                      "tokenizer_post_processor": post_processor_of(tok.hf),
                      "task": _merged(json.loads(task.to_json())) if task is not None else None,
                      "end_of_turn": list(tok.end_of_turn),
                      "document_start": "eos" if start_id == tok.eos_id and start_id != tok.bos_id else "bos",
                      "files": exported_files(tmp),
                      # (what `export --force` may replace: a transformers fine-tune saved over them is not its to delete)
                      "weights": {path.name: artifacts.sha256_file(path) for path in sorted(tmp.glob("*.safetensors"))}}
        (tmp / LLMKIT_CONFIG_FILE).write_text(json.dumps(provenance, indent=2, sort_keys=True) + "\n", encoding="utf-8")
    return out


def _merged(task: dict) -> dict:
    """The task record of exported weights, which are merged: a LoRA step checkpoint's says
    "merged": false, and its import was then taken for adapters without a base (a 2026-12-07 review)."""
    if isinstance(task.get("lora"), dict):
        task["lora"] = {**task["lora"], "merged": True}
    return task


def _update_json(path: Path, **values) -> None:
    data = json.loads(path.read_text(encoding="utf-8"))
    data.update(values)
    path.write_text(json.dumps(data, indent=2, sort_keys=True) + "\n", encoding="utf-8")
