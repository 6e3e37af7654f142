"""The generate stage: `run_generate(checkpoint, config)` -> completions; JSONL output for batch use.

Generation writes no artifact (it is for reading); `-o FILE.jsonl` keeps one record per
completion with the settings that made it, so a result can be reproduced with the same seed.
"""

from __future__ import annotations

import contextlib
import json
import math
from dataclasses import dataclass
from pathlib import Path
from typing import Callable

from llmkit.errors import NotFinite, UsageError, UserError, add_advice, unused_options
from llmkit.generate.config import GenerateConfig
from llmkit.inference.engine import Completion, Generator, check_fits, context_limit, needs_window, prompt_keep
from llmkit.inference.prompts import Prompt, chat_stop_ids, encode_prompt, fit_prompt, read_prompt_file, read_template_records
from llmkit.jsonl import check_unicode
from llmkit.outputs import MARK, WrittenBy

COMPLETIONS = WrittenBy("a file of completions generate wrote", "generate")  # (what --force may replace)


@dataclass
class Generated:
    prompt: Prompt
    completion: Completion
    fitted: bool = False  # cut to fit the context: the record also holds the text the model saw
    framed: bool = False  # put in a fine-tune's template or the chat's roles: its completion is no continuation of it
    logprobs: list[dict] | None = None  # its tokens with their log-probabilities (token_records), where asked for

    def record(self, cfg: GenerateConfig) -> dict:
        c = self.completion
        record = {
            MARK: "generate",  # first: what --force knows its own file by (a data set of {"prompt": ...} records began as these)
            "prompt": self.prompt.text if self.prompt.messages is None else None,
            "completion": c.text,
            "prompt_index": c.prompt_index,
            "sample_index": c.sample_index,
            "prompt_tokens": c.prompt_tokens,
            "completion_tokens": len(c.token_ids),
            "finish_reason": c.finish_reason,
            "seed": cfg.seed,
        }
        if cfg.beams.num_beams > 1:  # (what made it: a search, not a draw from the seed)
            record.update(num_beams=cfg.beams.num_beams, length_penalty=cfg.beams.length_penalty)
        if self.prompt.messages is not None:
            record["messages"] = self.prompt.messages
        if self.fitted:  # what the model saw, its template and special tokens written out
            record["fitted_prompt"] = c.prompt
        if self.logprobs is not None:
            record["logprobs"] = self.logprobs
        ours = set(record)
        record.update({name: value for name, value in self.prompt.meta.items() if name not in ours})
        for name, value in self.prompt.meta.items():  # a field named as one of ours (a data set's reference
            if name in ours:                          # "completion"): kept as input_completion (it was dropped unsaid)
                while name in record:
                    name = f"input_{name}"
                record[name] = value
        return record


def token_records(completion: Completion, tokenizer) -> list[dict]:
    """A completion's tokens with their log-probabilities, in OpenAI's shape: one
    `{"token", "id", "bytes", "logprob", "top_logprobs": [{"token", "id", "logprob"}, ...]}` a token
    (`token`: its text, bytes that are no whole character as \\xNN; `bytes`: exactly). A score that
    is no number (a model's NaN) is null: JSON has no NaN."""
    def number(value: float) -> float | None:
        return value if math.isfinite(value) else None

    scored = completion.logprobs
    return [
        {"token": tokenizer.id_to_piece(token), "id": token, "bytes": list(tokenizer.id_to_bytes(token)),
         "logprob": number(logprob),
         "top_logprobs": [{"token": tokenizer.id_to_piece(i), "id": i, "logprob": number(v)} for i, v in top]}
        for token, logprob, top in zip(completion.token_ids, scored.logprobs, scored.top)
    ]


def load_prompts(cfg: GenerateConfig) -> list[Prompt]:
    for i, text in enumerate(cfg.prompts):
        check_unicode(text, f"prompt {i + 1} (--prompt)", "write it in UTF-8")
    prompts = [Prompt(text=p) for p in cfg.prompts]
    if cfg.prompts_file:
        prompts.extend(read_prompt_file(cfg.prompts_file))
    if not prompts:  # (an option left out: a usage error, exit 2, as a missing argument is)
        raise UsageError("no prompt given; pass --prompt TEXT (repeatable) or --prompts FILE (.txt lines or .jsonl)")
    return prompts


def run_generate(
    checkpoint: Path | list[Path],
    cfg: GenerateConfig,
    *,
    on_text: Callable[[int, str], None] | None = None,
    on_batch: Callable[[list[Generated]], None] | None = None,
    on_ready: Callable[[list[Prompt], list[bool]], None] | None = None,
    prompts: list[Prompt] | None = None,
) -> list[Generated]:
    """Load the checkpoint and complete every prompt `num_samples` times. `on_ready(prompts, framed)`
    is called once everything is checked and loaded, just before the first token (`framed`: which
    prompts a template or chat roles frame, as `encode_prompt` encodes them). `prompts`: the
    config's, read already (`load_prompts`: a pipe given as --prompts can be read once only)."""
    from llmkit.model.ensemble import load_ensemble
    from llmkit.runtime import resolve_device

    params = cfg.params()
    prompts = load_prompts(cfg) if prompts is None else prompts
    members = cfg.ensembling.members(checkpoint)
    if unused := cfg.ensembling.single_model_flags(len(members)):
        raise unused_options(unused)
    loaded = load_ensemble(members, device=resolve_device(cfg.inference.device), purpose="generation",
                           weights=cfg.ensembling.weights, mode=cfg.ensembling.ensemble_mode)
    tokenizer = loaded.tokenizer
    if loaded.sampling is not None and cfg.beams.num_beams == 1:  # (an import's generation_config.json, where no sampling option is given; a search draws nothing)
        params = cfg.params(cfg.sampling.with_recommended(loaded.sampling, getattr(cfg, "given", None), str(members[0]),
                                                          draws=cfg.num_samples > 1))
    generator = Generator.for_checkpoint(loaded, compile=cfg.inference.compile)
    read_template_records(prompts, loaded.task)
    _check_prompts_fit_the_template(prompts, loaded.task)
    if any(p.messages is not None for p in prompts) and not tokenizer.own_chat_template:
        from llmkit.data.templates import chat_template, check_tokenizer

        check_tokenizer(chat_template(), tokenizer, "so it cannot read {\"messages\": ...} prompts (an imported GPT-2 or Llama "
                        "has none): give text prompts (--prompt, or {\"prompt\": ...} records) to continue text")
    if any(p.messages is not None for p in prompts) and loaded.task is None and not tokenizer.own_chat_template:
        from llmkit.console import note

        # (chat says so too; eval refuses such records for a base model)
        note(f"{members[0]} was never fine-tuned to chat (it has no task.json): its {{\"messages\": ...}} prompts are "
             "framed in llmkit's chat template, which it never saw, and it continues them as text; fine-tune it with "
             "llmkit finetune --template chat for replies")
    encoded = [encode_prompt(p, tokenizer, loaded.task, generator.start_id) for p in prompts]
    chat = (loaded.task is not None and loaded.task.is_chat) or any(p.messages for p in prompts)
    extra_stops = chat_stop_ids(tokenizer) if chat else None  # (None: a text's, Generator.complete's own)
    limit = context_limit(loaded.model)
    fitted_at: set[int] = set()  # prompts cut to fit
    if limit is not None and cfg.context_overflow == "slide":
        # A prompt too long for the context is cut as training and eval cut one, not from its start
        # (the window would drop the template's wording, a chat's system message, the first token):
        # a conversation loses its oldest exchanges, then its last message's end, a text-template
        # fine-tune's input its end; cut to what the window keeps of a prompt, the window then
        # keeps all of it.
        budget, cut = prompt_keep(limit, cfg.sampling.max_new_tokens), 0
        for i, prompt in enumerate(prompts):
            if len(encoded[i]) <= budget:
                continue
            try:
                fitted = fit_prompt(prompt, tokenizer, loaded.task, budget)
            except UserError as exc:
                raise UserError(f"prompt {i + 1}: {exc}") from None
            if fitted is not None:
                encoded[i], cut = fitted, cut + 1
                fitted_at.add(i)
        if cut:
            from llmkit.console import note

            note(f"{cut} of {len(prompts)} prompts did not fit in the context ({limit} tokens) beside "
                 f"--max-new-tokens {cfg.sampling.max_new_tokens}: a conversation's oldest exchanges (or its last message's "
                 "end) or a template's end of input were left out, as eval and finetune --truncate cut")
    longest = max(len(ids) for ids in encoded)
    max_new_tokens = cfg.sampling.max_new_tokens
    if cfg.beams.num_beams > 1 and needs_window(longest, max_new_tokens, limit):  # (before a batch is made: said mid-run)
        fix = (f"shorten it or lower --max-new-tokens to {limit - longest + 1}" if longest < limit
               else "shorten it: it alone fills the context")
        raise UserError(f"beam search keeps the prompt and --max-new-tokens within the context ({limit} tokens), and the "
                        f"longest prompt ({longest} tokens) with --max-new-tokens {max_new_tokens} exceeds it; {fix}")
    check_fits(longest, max_new_tokens, limit, cfg.context_overflow)  # before anything is printed or written
    if needs_window(longest, max_new_tokens, limit) and cfg.context_overflow == "slide":
        from llmkit.console import note

        note(f"prompt ({longest} tokens) + --max-new-tokens ({max_new_tokens}) exceed the context length "
             f"({limit}); generating with a sliding window (--context-overflow error to refuse instead)")
    # (a fine-tune's template or a chat frames the prompt: printed, the answer goes on a line of its own)
    task = loaded.task
    framed = [p.messages is not None or (task is not None and (task.is_chat or task.text_template is not None))
              for p in prompts]
    if on_ready is not None:
        on_ready(prompts, framed)
    results: list[Generated] = []

    def finished(completions: list[Completion]) -> None:  # each batch's, printed or written while later ones run
        at = [c.prompt_index - cfg.first_index for c in completions]  # (each prompt's place in this run)
        batch = [Generated(prompts[i], c, fitted=i in fitted_at, framed=framed[i],
                           logprobs=None if c.logprobs is None else token_records(c, tokenizer))
                 for i, c in zip(at, completions)]
        results.extend(batch)
        if on_batch is not None:
            on_batch(batch)

    try:
        generator.complete(encoded, params, num_samples=cfg.num_samples, batch_size=cfg.batch_size, on_text=on_text,
                           extra_stop_ids=extra_stops, on_batch=finished, prompt_offset=cfg.first_index,
                           logprobs=cfg.logprobs)
    except NotFinite as exc:
        from llmkit.model.ensemble import scoring_members

        raise UserError(exc.explained(scoring_members(loaded))) from None
    return results


class JsonlOutput:
    """Completion records written as they are made, by one run at a time (it holds the output's
    lock from entering to leaving), into a temporary sibling of `path` of its own, renamed to
    `path` at the end. A run that stops early keeps what it made in `PATH.partial` (replacing an
    older one) and says so, and leaves nothing at `path`; a run that completes removes an older
    `PATH.partial`, which its own records supersede."""

    def __init__(self, path: Path, cfg: GenerateConfig, force: bool = False):
        self.path, self.cfg, self.force, self.written = Path(path), cfg, force, 0
        self.partial = self.path.with_name(self.path.name + ".partial")

    def __enter__(self) -> JsonlOutput:
        from llmkit.outputs import file_output_lock, temporary_file

        with contextlib.ExitStack() as stack:
            stack.enter_context(file_output_lock(self.path, self.force, COMPLETIONS))
            self.handle, self.tmp = temporary_file(self.path)
            self.unlock = stack.pop_all()
        return self

    def write(self, batch: list[Generated]) -> None:
        for item in batch:
            self.handle.write(json.dumps(item.record(self.cfg), ensure_ascii=False) + "\n")
        self.handle.flush()
        self.written += len(batch)

    def __exit__(self, kind, error, trace) -> None:
        from llmkit.outputs import publish_file

        try:
            try:
                self.handle.close()  # may fail itself (a full disk): the temporary goes all the same
            except BaseException:
                self.tmp.unlink(missing_ok=True)
                raise
            if kind is None:
                publish_file(self.tmp, self.path)
                self.partial.unlink(missing_ok=True)
            elif self.written:
                publish_file(self.tmp, self.partial)
                if error is not None:  # on the error's line (a rerun makes them all again: generate does not resume)
                    add_advice(error, f"the {self.written} completion(s) made before stopping are in {self.partial}; a rerun "
                                   "makes them all again")
            else:
                self.tmp.unlink(missing_ok=True)
        finally:
            self.unlock.close()


def _check_prompts_fit_the_template(prompts: list[Prompt], task) -> None:
    """A text-template fine-tune reads its template's fields: a conversation is refused, and a
    plain prompt that leaves the template's other fields empty is said to."""
    template = task.text_template if task is not None and not task.is_chat else None
    if template is None:
        return
    from llmkit.data.templates import plain_fields
    from llmkit.jsonl import ABSENT, field_value

    if any(p.messages is not None for p in prompts):
        raise UserError(f"this checkpoint was fine-tuned on the text template {template.get('name', 'of its task.json')!r}, not "
                        "on conversations: give text prompts (or records with its fields), not messages")
    others = [f for f in plain_fields(template["prompt"], "the checkpoint's template") if f != template["input_field"]]
    if others and any(p.record is None or any(field_value(p.record, f) is ABSENT for f in others) for p in prompts):
        from llmkit.console import note

        note(f"the checkpoint's template also reads {', '.join(others)}, left empty for a plain prompt (the prompt "
             f"fills {template['input_field']}); give --prompts records with every field")
