"""`llmkit import`: a local transformers GPT-2 or Llama directory as a checkpoint artifact."""

from __future__ import annotations

import dataclasses
import json
from pathlib import Path

import torch

from llmkit.errors import UserError
from llmkit.interop.hf_files import (
    LLMKIT_CONFIG_FILE,
    check_float_weights,
    export_record,
    read_config_json,
    read_hf_state,
    torch_dtype,
    weight_files,
)
from llmkit.interop.hf_tokenizer import (hf_special_tokens, quiet_transformers, read_hf_tokenizer, with_post_processor,
                                         write_tokenizer_folder)
from llmkit.model.gpt import ModelConfig
from llmkit.model.hf_config import (SHAPE_KEYS, SUPPORTED_MODEL_TYPES, from_hf_config, hf_bias_groups, refuse_other_heads,
                                    unsupported_model_type)
from llmkit.model.hf_weights import from_hf_state, normalize_hf_keys


def _prefer_original_config(provenance: dict, imported: ModelConfig, state: dict[str, torch.Tensor]):
    """A directory llmkit exported carries the original ModelConfig: use it when it describes
    the same network, so export -> import gives back the config field for field. A bias-free
    GPT-2-style model came out with zero biases (GPT-2 always has them): drop them again."""
    try:
        original = ModelConfig.from_dict(provenance["model_config"])
    except (KeyError, TypeError, ValueError, AttributeError, OverflowError):  # absent, or not a config: the imported one stands
        return imported, state
    # (arch and objective too: the record is no file the fingerprint covers, and one edited to say mlm made the
    # import a bidirectional model that computes something else than config.json's, unsaid)
    same = ("arch", "objective", "vocab_size", "context_length", "n_layer", "n_embd", "norm", "pos", "activation",
            "tie_embeddings", "rope_theta", "norm_eps", "n_head")
    if original.mlp_hidden != imported.mlp_hidden or any(getattr(original, f) != getattr(imported, f) for f in same):
        return imported, state
    if original.bias and not imported.bias:
        return imported, state
    # GPT-2 export repeated the KV heads: the multi-head form is kept (the same function)
    config = original if original.n_kv_head == imported.n_kv_head else imported
    if not original.bias and imported.bias:  # every bias (linear and LayerNorm) follows `bias`
        biases = [k for k in state if k.endswith(".bias")]
        if any(bool(state[k].any()) for k in biases):
            return imported, state  # trained biases since: they are part of the model now
        state = {k: v for k, v in state.items() if not k.endswith(".bias")}
        config = dataclasses.replace(config, bias=False)  # (multi-head too: the zero biases were parameters of nothing)
    return config, state


def _recommended_sampling(src: Path):
    """The sampling generation_config.json sets (Llama 3 Instruct's temperature 0.6 and top-p 0.9),
    recorded so that generate and chat sample as transformers would where no option says otherwise
    (until 2026-12-07 the import dropped it: llmkit's own defaults, temperature 0.8, sampled it)."""
    from llmkit.model.records import SamplingRecord

    try:
        config = json.loads((src / "generation_config.json").read_text(encoding="utf-8"))
    except (OSError, ValueError, RecursionError):
        return None
    return SamplingRecord.of_generation_config(config)


def _end_of_turn(src: Path, tokenizer, special: dict[str, str]) -> list[str]:
    """The tokens besides eos that generation_config.json stops at (a chat fine-tune's end of
    turn: Llama 3's <|eot_id|>, ChatML's <|im_end|>): generate, chat and eval stop there too, and
    export writes them back. The start, padding and mask tokens are no end of a turn; and a list of
    every special token is llmkit's own export's (since 2026-12-07: its generation stops at each), which
    names no end of a turn (a base model re-saved without llmkit_model_config.json came back with
    <|user|> among its ends, which --ignore-eos then let through as text)."""
    try:
        ids = json.loads((src / "generation_config.json").read_text(encoding="utf-8")).get("eos_token_id") or []
    except (OSError, ValueError, AttributeError, RecursionError):
        return []
    tokens = [tokenizer.id_to_token(i) for i in (ids if isinstance(ids, list) else [ids])
              if isinstance(i, int) and not isinstance(i, bool)]
    roles = {special.get(role) for role in ("bos", "eos", "pad", "mask")}
    specials = {added.content for added in tokenizer.get_added_tokens_decoder().values() if added.special}
    specials.discard(json.loads(tokenizer.to_str()).get("model", {}).get("unk_token"))  # (text, not a stop: export leaves it out)
    # llmkit's export's list: special tokens only, every one that is no role among them (a foreign model's tokenizer of
    # <s> and </s> alone met the looser test whatever it listed, and lost its <|im_end|>: a review)
    # (and its start token among them, which llmkit's export lists and a foreign model's ends do not: a Llama-style
    # tokenizer whose one other special was its <|im_end|> met the rest of the test, and lost it: a review)
    listed, others = set(tokens), specials - roles
    if others and others <= listed and listed <= specials | roles and special.get("bos") in listed:
        return []
    return [t for t in dict.fromkeys(tokens) if t is not None and t not in roles]


def _source_chat_template(src: Path) -> str | None:
    """A chat model's own Jinja template: chat_template.jinja, or tokenizer_config.json's
    "chat_template" (a text, or named templates, of which "default")."""
    if (src / "chat_template.jinja").is_file():
        try:
            return (src / "chat_template.jinja").read_text(encoding="utf-8") or None
        except UnicodeDecodeError as exc:
            raise UserError(f"{src}/chat_template.jinja is not UTF-8 text ({exc}); re-save the tokenizer") from None
    try:
        settings = json.loads((src / "tokenizer_config.json").read_text(encoding="utf-8"))
    except (OSError, ValueError, RecursionError):
        return None
    template = settings.get("chat_template") if isinstance(settings, dict) else None
    if isinstance(template, list):
        named = {t.get("name"): t.get("template") for t in template if isinstance(t, dict)}
        template = named.get("default")
    return template if isinstance(template, str) and template else None


def _document_start(provenance: dict, tokenizer, special: dict[str, str]) -> str:
    """"bos" or "eos": the token the weights saw documents start after. llmkit's export records it;
    a folder without that record (one transformers re-saved: `save_pretrained` keeps no file of
    ours) still has the post-processor export wrote, which puts that token before a text. Its eos
    there (distinct from the bos) is recorded as such: taken for the bos, the import conditioned
    prompts on a token the weights never saw in that place, while transformers, on the same folder,
    used the eos. "bos" otherwise, as for any model, recorded as export records it (left out, a foreign
    folder imported, exported and imported again changed its fingerprint, every file the same)."""
    if provenance.get("document_start") in ("bos", "eos"):
        return provenance["document_start"]
    first = _prepended_token(json.loads(tokenizer.to_str()).get("post_processor"))
    return "eos" if first is not None and first == special.get("eos") != special.get("bos") else "bos"


def _prepended_token(processor) -> str | None:
    """The one special token a tokenizer.json post-processor puts before a single text (a
    TemplateProcessing, alone or in a Sequence), else None."""
    if not isinstance(processor, dict):
        return None
    if processor.get("type") == "Sequence":
        found = [t for t in map(_prepended_token, processor.get("processors") or []) if t is not None]
        return found[0] if len(found) == 1 else None
    if processor.get("type") != "TemplateProcessing":
        return None
    before = []
    for item in processor.get("single") or []:
        if isinstance(item, dict) and "Sequence" in item:
            break
        before.append(item.get("SpecialToken", {}).get("id") if isinstance(item, dict) else None)
    return before[0] if len(before) == 1 and isinstance(before[0], str) else None


def _untie_a_stored_head(config: ModelConfig, state: dict[str, torch.Tensor], model_type: str) -> ModelConfig:
    """A config that says tied, with an lm_head in the file that is not the embedding: the head
    is what the model computes with (transformers 5 keeps it, and says so), so it is kept untied."""
    head = state.get("lm_head.weight")
    embedding = state.get("transformer.wte.weight" if model_type == "gpt2" else "model.embed_tokens.weight")
    if not config.tie_embeddings or head is None or embedding is None or torch.equal(head, embedding):
        return config
    from llmkit.console import note

    note("config.json says tie_word_embeddings, but the weights hold an lm_head that differs from the embedding; "
         "imported untied, as transformers runs it")
    return dataclasses.replace(config, tie_embeddings=False)


def _importable_model_type(src: Path, config_json: dict) -> str:
    """config.json's model_type, once its config is one llmkit can build: a supported family, a
    language model (not a task head), its whole shape given and positive, not quantized."""
    model_type = config_json.get("model_type")
    if model_type is None or model_type in SUPPORTED_MODEL_TYPES:  # (a Llama classifier without its model_type too)
        refuse_other_heads(config_json.get("architectures"))
    if model_type not in SUPPORTED_MODEL_TYPES:
        raise unsupported_model_type(model_type, config_json.get("architectures"))
    missing = [key for key in SHAPE_KEYS[model_type] if key not in config_json]
    if missing:
        raise UserError(f"{src}/config.json lacks {', '.join(missing)}, part of the model's shape (transformers would "
                        "fill in another model's defaults); re-save the model with save_pretrained")
    not_positive = next((key for key in SHAPE_KEYS[model_type] if isinstance(config_json[key], (int, float))
                         and not isinstance(config_json[key], bool) and config_json[key] <= 0), None)
    if not_positive is not None:  # (a negative width was reported as an unsupported head size)
        raise UserError(f"{src}/config.json gives {not_positive} {config_json[not_positive]}, where a model's sizes are "
                        "positive; correct it, or re-save the model with save_pretrained")
    quantized = config_json.get("quantization_config")
    if quantized is not None:
        method = quantized.get("quant_method", "?") if isinstance(quantized, dict) else "?"
        raise UserError(f"{src} holds a quantized model ({method}); llmkit trains and runs full-precision weights: "
                        "import the unquantized model (or dequantize it first and save it with save_pretrained)")
    return model_type


def import_hf(src: Path | str, out: Path | str, *, force: bool = False, dtype: str = "float32") -> Path:
    """Turn a local transformers GPT-2 or Llama directory into a checkpoint artifact. Returns `out`."""
    from llmkit import artifacts, outputs
    from llmkit.model.gpt import GPT
    from llmkit.model.io import TOKENIZER_DIR, check_shapes, save_weights, tied_names
    from llmkit.model.records import CheckpointStats

    src = Path(src)
    weight_dtype = torch_dtype(dtype)
    config_json = read_config_json(src)  # first: a missing or wrong input leaves no folders made for -o
    model_type = _importable_model_type(src, config_json)
    out = outputs.check_output(out, force, inputs=[src], writes="checkpoint")
    files = weight_files(src)
    tokenizer = read_hf_tokenizer(src)
    try:
        from transformers import AutoConfig

        with quiet_transformers():
            hf_config = AutoConfig.from_pretrained(str(src), local_files_only=True)
    except Exception as exc:
        raise UserError(f"{src}/config.json is not a valid {model_type} config ({exc}); re-save the model") from exc
    config = from_hf_config(hf_config)
    tok_vocab = tokenizer.get_vocab_size(with_added_tokens=True)
    if tok_vocab > config.vocab_size:
        raise UserError(
            f"the tokenizer in {src} has {tok_vocab} tokens but the model only {config.vocab_size} embeddings; "
            "the directory mixes a model and a tokenizer that do not belong together"
        )
    special = hf_special_tokens(src, config_json, tokenizer)
    record = export_record(src)
    provenance = record.parts
    if record.stale:
        from llmkit.console import note

        note(f"{', '.join(record.files)} changed since llmkit exported {src}: what {LLMKIT_CONFIG_FILE} "
             f"recorded of them ({', '.join(record.stale)}) is read from the folder instead, as from any transformers "
             "folder")
    if "end_of_turn" in provenance:  # llmkit's own export: its generation_config.json also lists a chat's role tokens
        listed = provenance["end_of_turn"]
        end_of_turn = [t for t in listed if isinstance(t, str)] if isinstance(listed, list) else []
    else:
        end_of_turn = _end_of_turn(src, tokenizer, special)
    # a fine-tune exported by llmkit comes back with its task.json: its template is that task's format
    chat_template = _source_chat_template(src) if not isinstance(provenance.get("task"), dict) else None
    if "tokenizer_post_processor" in provenance:  # export added one for transformers; llmkit's own had this
        tokenizer = with_post_processor(tokenizer, provenance["tokenizer_post_processor"])
    hf_state = normalize_hf_keys(read_hf_state(files), model_type)
    check_float_weights(hf_state)
    config = _untie_a_stored_head(config, hf_state, model_type)
    state = from_hf_state(hf_state, config, model_type, weight_dtype, bias_groups=hf_bias_groups(hf_config))
    config, state = _prefer_original_config(provenance, config, state)
    task = None
    if isinstance(provenance.get("task"), dict):  # a fine-tune keeps its prompt format (whatever form the network took)
        from llmkit.model.records import TaskRecord

        task = TaskRecord.from_dict(provenance["task"], f"{src}/{LLMKIT_CONFIG_FILE}")
    sampling = _recommended_sampling(src)
    with torch.device("meta"):  # names and shapes only: the weights are the source's, so none is initialised
        model = GPT(config)
    expected = model.state_dict()
    missing = set(expected) - set(state) - tied_names(model)
    unexpected = set(state) - set(expected)
    if missing or unexpected:
        raise AssertionError(f"hf_weights.py mapping bug: missing {sorted(missing)}, unexpected {sorted(unexpected)}")
    check_shapes(model, state, src, config_file="config.json", fix="re-save the model")
    with artifacts.create(out, "checkpoint", force=force, inputs=[src]) as build:
        save_weights(model, build.dir, {k: state[k] for k in expected if k in state})
        write_tokenizer_folder(tokenizer, special, build.dir / TOKENIZER_DIR, src, end_of_turn, chat_template)
        if task is not None:
            task.write(build.dir)
        if sampling is not None:
            sampling.write(build.dir)
        build.config = {
            "source": "huggingface",
            "model_type": model_type,
            "architectures": config_json.get("architectures") or [],
            "dtype": dtype,
            "model": config.to_dict(),
            "special_tokens": special,
            "document_start": _document_start(provenance, tokenizer, special),
        }
        build.seed = None  # nothing is drawn: an import is the same work whatever --seed says
        build.stats = CheckpointStats(params=model.num_params(), vocab_size=config.vocab_size, tokenizer_vocab_size=tok_vocab).to_dict()
    return out
