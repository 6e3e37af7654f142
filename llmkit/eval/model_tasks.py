"""Evaluations that run a checkpoint: perplexity/bpb, generation for BLEU/ROUGE/SQuAD, classification."""

from __future__ import annotations

import dataclasses
import json
import string
from pathlib import Path

from llmkit import artifacts
from llmkit.errors import NotFinite, UsageError, UserError
from llmkit.eval import names as metric_names
from llmkit.eval.sources import artifact_kind, load_records
from llmkit.eval.textio import keeping_places, place
from llmkit.eval.textio import pick_field
from llmkit.model.records import CLASSIFY_TEXT_FIELDS, Labels

# Fields looked for in --data records, in order, when no --field / --reference-field / --label-field is given.
TEXT_FIELDS = ("text", "document", "content")
INPUT_FIELDS = ("source", "document", "prompt", "input", "question", "text")
REFERENCE_FIELDS = ("target", "summary", "reference", "references", "answer", "answers.text")  # (the last: SQuAD's records)
CONTEXT_FIELDS = ("query", "context", "question", "prompt", "text")
LABEL_FIELDS = ("label", "answer", "gold")


def start_id(loaded) -> int:
    from llmkit.inference.prompts import document_start_id

    return document_start_id(loaded.tokenizer, loaded.artifact, loaded.task)


def _pad_id(tokenizer) -> int:
    return tokenizer.pad_id if tokenizer.pad_id is not None else tokenizer.eos_id


def _progress_bar(total: int, description: str):
    from llmkit.console import progress

    bar = progress()
    task = bar.add_task(description, total=total)
    return bar, (lambda n: bar.advance(task, n))


# ---------------------------------------------------------------------------------------------
# perplexity / bits per byte


def _note_a_corpus_is_scored_whole(checkpoints: list[artifacts.Artifact], corpus: artifacts.Artifact) -> None:
    """A corpus is scored document by document, all of it: the text a model was trained on, if it
    was (a tokens artifact's val split is what tokenize held out). Said more plainly where a
    checkpoint's recorded inputs (an ensemble's: any member's) lead to this corpus."""
    from llmkit.console import note

    found = ((art, _tokens_made_of(art, corpus.fingerprint, depth=3)) for art in checkpoints)
    checkpoint, tokens = next(((art, tokens) for art, tokens in found if tokens is not None), (checkpoints[0], None))
    if tokens is not None and not ((artifacts.load(tokens, check=False).stats.get("val") or {}).get("tokens")):
        note(f"{checkpoint.path} was trained on this corpus (through {tokens}, which holds out no text): every document "
             "of it is scored, the training text")
    elif tokens is not None:
        note(f"{checkpoint.path} was trained on this corpus (through {tokens}): every document of it is scored, the "
             f"training text included; the held-out text is the tokens artifact's val split (--data {tokens})")
    else:
        note("a corpus is scored whole, every document; if the model was trained on it, pass the tokens artifact made "
             "of it (--data TOKENS), whose val split tokenize held out")


def _tokens_made_of(art: artifacts.Artifact, corpus_fingerprint: str, depth: int) -> Path | None:
    """The tokens artifact among `art`'s recorded inputs (and its base checkpoint's, for a fine-tune)
    that was made of the corpus with that fingerprint, where they can still be read."""
    for ref in art.manifest.inputs:
        recorded = art.recorded_input(ref["role"])
        if recorded.kind not in ("tokens", "checkpoint") or depth == 0:
            continue
        try:
            inner = artifacts.load(recorded.path, check=False)
        except (UserError, OSError):  # (moved or deleted since: nothing to tell)
            continue
        if inner.fingerprint != recorded.fingerprint:
            continue
        if inner.kind == "tokens" and any(i["fingerprint"] == corpus_fingerprint for i in inner.manifest.inputs):
            return recorded.path
        if inner.kind == "checkpoint" and (found := _tokens_made_of(inner, corpus_fingerprint, depth - 1)) is not None:
            return found
    return None


def perplexity_documents(loaded, cfg):
    """Documents (tokens + word/byte counts) from --data."""
    from llmkit.eval.perplexity import Document, document_from_text

    tokenizer = loaded.tokenizer
    kind = artifact_kind(cfg.data)
    if kind == "tokens":
        from llmkit.data.shards import TokenShards

        art = artifacts.load(cfg.data, kind="tokens")
        shards = TokenShards.open(art, "val")
        from llmkit.data.tokenizer import same_tokenizer

        if not same_tokenizer(loaded.artifact.path, art.path):  # other ids for the same text: the scores would mean nothing
            raise UserError(
                f"tokens artifact {cfg.data} was made with another tokenizer than {loaded.artifact.path} has; tokenize the "
                f"text with the checkpoint's tokenizer (llmkit tokenize CORPUS --tokenizer {loaded.artifact.path}), or pass "
                "the text itself as --data"
            )
        special = tokenizer.token_bytes == 0
        documents = []
        for i, doc in enumerate(shards.iter_documents()):
            if cfg.limit is not None and i >= cfg.limit:
                break
            tokens = [int(t) for t in doc]
            if tokens and max(tokens) >= len(special):  # (an IndexError, "unexpected", before)
                raise UserError(f"the token shards of {cfg.data} hold id {max(tokens)}, outside the vocabulary of "
                                f"{len(special)}; the tokens artifact is damaged (llmkit verify {cfg.data} names the file), "
                                "rebuild it with llmkit tokenize")
            if tokens and tokens[0] == tokenizer.bos_id:
                tokens = tokens[1:]  # a stored BOS is the document start, the prefix every document is scored after
            while tokens and special[tokens[-1]]:
                tokens.pop()  # the closing EOS is never scored; dropping it keeps windows as for raw text
            words = len(tokenizer.decode(tokens).split())
            documents.append(Document(tokens, words=words, bytes=None))
        if not documents:
            raise UserError(f"tokens artifact {cfg.data} has an empty val split; tokenize with a validation fraction > 0")
        return documents
    records = load_records(cfg.data, cfg.split, cfg.limit)
    if kind == "corpus":
        _note_a_corpus_is_scored_whole(getattr(loaded, "members", None) or [loaded.artifact], artifacts.load(cfg.data, kind="corpus"))
    template = loaded.task.template if loaded.task is not None else None
    if records and cfg.text_field is None and template is not None and _fine_tune_examples(records[0], template):
        return _learned_documents(records, template, loaded)
    if records and isinstance(records[0].get("messages"), list) and (cfg.text_field or "messages") == "messages" and not any(
            field in records[0] for field in TEXT_FIELDS):  # (the two errors that pick_field and text_of gave sent one round)
        raise UserError(f"{cfg.data} holds conversations ('messages'), which a chat fine-tune's perplexity scores (its "
                        f"replies) and {loaded.artifact.path} is not one: give a .txt file or records with a text field, "
                        "or evaluate a chat fine-tune")
    name = pick_field(records, cfg.text_field, TEXT_FIELDS, "text to score", "--field")
    texts = [text_of(r, name, place(records, i)) for i, r in enumerate(records)]
    empty = [i for i, text in enumerate(texts) if not text]
    if empty and texts and len(empty) < len(texts):  # (a perplexity of fewer documents than the file has: said)
        from llmkit.console import note

        note(f"{len(empty)} of the {len(texts)} records have an empty {name!r} (the first, {place(records, empty[0])}): "
             "nothing to score, left out; predictions.jsonl numbers the others by their record")
    # (numbered by record, so that predictions.jsonl joins back to the data past an empty record)
    return [dataclasses.replace(document_from_text(text, tokenizer), index=i) for i, text in enumerate(texts) if text]


def _fine_tune_examples(record: dict, template: dict) -> bool:
    """Records shaped as the fine-tune's own data: what its template trains on (conversations, or a
    prompt and a response, for a chat model; its fields for a text-template one, `document` for
    summarize), and no other text field."""
    if template["type"] == "chat":
        return isinstance(record.get("messages"), list) or all(isinstance(record.get(f), str) for f in ("prompt", "response"))
    from llmkit.jsonl import ABSENT, field_value

    fields = {template["input_field"], template["target_field"]}
    return all(field_value(record, f) is not ABSENT for f in fields) and not any(f in record for f in TEXT_FIELDS if f not in fields)


def _learned_documents(records: list[dict], template: dict, loaded) -> list:
    """A fine-tune's examples, encoded as finetune encodes them: scored are the tokens it learned to
    write (each reply, and the token that ends it), after everything before them. Perplexity is
    then exp(the fine-tune's validation loss) on the same examples; words and bytes are the replies'."""
    from itertools import groupby

    from llmkit.data.templates import check_tokenizer, encode_example
    from llmkit.eval.perplexity import Document

    tokenizer = loaded.tokenizer
    check_tokenizer(template, tokenizer, fix="evaluate another checkpoint")
    documents = []
    for i, record in enumerate(records):
        if template["type"] == "chat" and isinstance(record.get("messages"), list) and record["messages"] and \
                isinstance(record["messages"][-1], dict) and record["messages"][-1].get("role") != "assistant":
            raise UserError(f"{place(records, i)}: its conversation ends with a {record['messages'][-1].get('role')} message; "
                            "perplexity scores the replies as the fine-tune learned them, each up to the turn after it, "
                            "so a conversation ends with the assistant's: drop the messages after the last reply")
        example = encode_example(template, record, tokenizer, place(records, i), suggest_template=False)  # (eval has no --template)
        own = "jinja" in template  # (the model's own chat template starts a conversation with its own first token)
        if example.ids[0] != start_id(loaded) and not own:  # (what the windows put first: the fine-tune's start token)
            raise UserError(f"{place(records, i)} does not start with the token {loaded.artifact.path} was fine-tuned to start with")
        ids, learned = example.ids[1:], example.learn[1:]
        replies = [[token for token, _ in run] for flag, run in groupby(zip(ids, learned), key=lambda pair: pair[1]) if flag]
        words = sum(len(tokenizer.decode(reply, skip_special_tokens=True).split()) for reply in replies)
        documents.append(Document(ids, words=words, bytes=None, index=i, learned=learned, prefix=example.ids[0] if own else None))
    # (the positions finetune read of an example: its --seq-len, where given, else the context)
    trained_on = loaded.artifact.manifest.config.get("seq_len") or loaded.model.config.context_length
    longer = sum(len(document.tokens) > trained_on for document in documents)
    if longer:  # (finetune cut them, or dropped them: its validation loss scored other tokens)
        from llmkit.console import note

        note(f"{longer:,} of {len(documents):,} examples are longer than the {trained_on:,} positions the fine-tune read "
             "of one: scored whole in rolling windows, where finetune cut them (--truncate) or left them out, so the "
             "perplexity is not exp of its validation loss")
    return documents


def text_of(record: dict, field: str, where: str) -> str:
    """A record's text field, which must be text: a null or a number is an error, never "None"."""
    value = record[field]
    if not isinstance(value, str):
        from llmkit.jsonl import json_kind

        raise UserError(f"{where} field {field!r} is {json_kind(value)}, not text; fix the data or choose another "
                        "--field")
    return value



def perplexity(loaded, cfg):
    from llmkit.eval.perplexity import score_documents

    documents = perplexity_documents(loaded, cfg)
    context = int(loaded.config.context_length)
    if cfg.rolling_context > context:
        raise UsageError(f"--rolling-context {cfg.rolling_context} exceeds the model's context length {context}; give "
                         f"{context} or less (the tokens of context each scored chunk keeps)")
    windows = sum(1 + max(0, -(-(len(d.tokens) - context) // (context - cfg.rolling_context + 1))) for d in documents if d.tokens)
    bar, advance = _progress_bar(windows, "perplexity")
    with bar:
        result = score_documents(
            loaded.model,
            documents,
            prefix_token=start_id(loaded),
            token_bytes=loaded.tokenizer.token_bytes,
            pad_id=_pad_id(loaded.tokenizer),
            context_len=cfg.rolling_context,
            batch_size=cfg.batch_size,
            progress=advance,
        )
    if result.tokens == 0 or result.bytes == 0:
        raise UserError(f"--data {cfg.data} has no text tokens to score")
    return result


# ---------------------------------------------------------------------------------------------
# generation for BLEU / chrF / ROUGE / SQuAD


def render_template(template: str, record: dict, input_field: str, where: str = "a record") -> str:
    """A prompt from a record: its fields fill the template's ({a.b} reaching into objects); {input}
    is the input field where the record has no "input" of its own (or the field has a name no
    placeholder could hold, "de-en", or a dotted one: then it is that field whatever the record holds)."""
    from llmkit.data.templates import plain_fields, render
    from llmkit.jsonl import ABSENT, field_value

    names = plain_fields(template, "--prompt-template")
    values = dict(record)
    if input_field.isidentifier():
        values.setdefault("input", record[input_field])
    else:  # {input} stands in for a name no placeholder can hold (`placeholder`): a record's own "input" is not it
        values["input"] = record[input_field]
    missing = next((name for name in names if field_value(values, name) is ABSENT), None)
    if missing is not None:
        raise UserError(f"the prompt template (--prompt-template, or the checkpoint's task.json) names {{{missing}}} but the "
                        f"data has no field {missing!r}; fields: {', '.join(record) or 'none'} (rename the field, or pass "
                        "--prompt-template)")
    return render(template, values, where)


def placeholder(field: str) -> str:
    """The default prompt's placeholder of a field: {input} for a name that is no placeholder name
    ("de-en"), which render_template fills with that field."""
    from llmkit.data.templates import is_field_name

    return "{" + (field if is_field_name(field) else "input") + "}"


def _trained_framing(loaded, cfg, records: list[dict], text_field: str, scored: str, choices: list[list[str]]):
    """A fine-tune's texts and their labels (or questions and their choices) framed as it was
    trained, where --prompt-template does not say otherwise: a chat fine-tune's text as a user
    message and each label as the assistant's reply (lm-eval's --apply_chat_template; in the
    model's own chat template where it was fine-tuned in that, the reply's tokens as the rendered
    conversation holds them), a text template's prompt (its input field filled with the text) and
    each label as its response. A text too long for the context beside its longest label loses its
    end, as finetune --truncate cuts it (scored from the left, it lost the start token, the role
    and the template's wording). Returns (contexts as token ids, pair(index, choice) -> (context
    ids, choice ids)) for score_choices, or None for plain text (a base model). Until 2026-12-07 a
    chat fine-tune was scored on bare text, and a text-template one's labels in its template
    (refused where the data named its input otherwise) but its choices not."""
    from llmkit.console import note
    from llmkit.data.templates import (Rendered, encode_chat_prompt, encode_rendered, fit_field, message_ids,
                                       response_frame)
    from llmkit.inference.prompts import chat_turns

    task, tokenizer = loaded.task, loaded.tokenizer
    if cfg.prompt_template is not None or task is None or not (task.is_chat or task.text_template):
        return None
    members = [str(art.path) for art in (getattr(loaded, "members", None) or [loaded.artifact])]
    fine_tuned = f"{', '.join(members)} {'were' if len(members) > 1 else 'was'} fine-tuned"
    plain = "(--prompt-template '{" + placeholder(text_field)[1:-1] + "}' scores plain text)"
    texts = [text_of(r, text_field, place(records, i)) for i, r in enumerate(records)]
    if task.is_chat:
        note(f"scored as {fine_tuned}: each text a user message, each {scored} the assistant's reply {plain}")
        own = bool(tokenizer.own_chat_template)

        def context_of(record: dict, text: str, where: str = "a record") -> list[int]:
            return encode_chat_prompt(chat_turns(record, text), tokenizer)

        def reply(record: dict, text: str, context: list[int], choice: str) -> tuple[list[int], list[int]]:
            if not own:
                return context, message_ids(choice, context[-1], tokenizer.eos_id, tokenizer)
            # the model's own template: the reply's characters in the conversation rendered with it, as training saw
            # them (its wording between the prompt and the reply, " " in "assistant: {reply}", belongs to the reply)
            messages = chat_turns(record, text)
            prompt = tokenizer.render_own_chat(messages)
            full = tokenizer.render_own_chat([*messages, {"role": "assistant", "content": choice}], generation_prompt=False)
            at = full.find(choice, len(prompt)) if full.startswith(prompt) else -1
            if at < 0:
                return context, tokenizer.encode_continuation(choice)
            encoded = tokenizer.encode_rendered_chat(full[: at + len(choice)])
            split = sum(1 for _, end in encoded.offsets if end <= len(prompt))
            return list(encoded.ids[:split]), list(encoded.ids[split:])
    else:
        note(f"scored as {fine_tuned}: each text in its prompt template, each {scored} as its response {plain}")
        trained = task.text_template
        field, target = trained["input_field"], trained.get("target_field")
        lead, tail = response_frame(trained)
        lead_ids = encode_rendered(Rendered.all_wording(lead), tokenizer, tokenizer.encode_continuation) if lead else []
        parts = list(string.Formatter().parse(trained["response"]))  # (its literal text with "{{" read as "{")
        target = target or next(name for _, name, _, _ in parts if name)

        def context_of(record: dict, text: str, where: str = "a record") -> list[int]:
            prompt = render_template(trained["prompt"], {**record, field: text}, field, where)
            return [start_id(loaded)] + encode_rendered(prompt, tokenizer) + lead_ids

        def reply(record: dict, text: str, context: list[int], choice: str) -> tuple[list[int], list[int]]:
            response = "".join(literal + (choice if name == target else "") for literal, name, _, _ in parts)
            after = response[len(lead):] if response.startswith(lead) else response
            return context, tokenizer.encode_continuation(after[: len(after) - len(tail)] if tail and after.endswith(tail)
                                                          else after)

    limit = int(loaded.model.config.context_length)
    contexts, cut = [], 0
    for i, (record, text) in enumerate(zip(records, texts)):
        context = context_of(record, text, place(records, i))  # (a template's refusal names the record)
        longest = max(len(reply(record, text, context, c)[1]) for c in choices[i])
        if len(context) + longest > limit + 1:
            fitted = fit_field(lambda r: context_of(record, r["text"]), {"text": text}, "text", tokenizer, limit + 1 - longest)
            if fitted is not None and fitted["text"] != text:
                texts[i], cut, context = fitted["text"], cut + 1, context_of(record, fitted["text"])
        contexts.append(context)
    if cut:
        note(f"{cut} of {len(records)} texts did not fit in the model's context ({limit} tokens) with their longest "
             f"{scored} in the fine-tune's format: their end was left out, as finetune --truncate cuts them")
    return contexts, lambda index, choice: reply(records[index], texts[index], contexts[index], choice)


def _trained_prompt(task) -> str | None:
    """The prompt pattern a text-template fine-tune was trained with ({field} placeholders)."""
    template = task.text_template if task is not None else None
    return template["prompt"] if template is not None else None


def _fit_prompts(records: list[dict], template: str, input_field: str, loaded, chat: bool, max_new_tokens: int,
                 lead: list[int] | None = None, shown_field: str | None = None) -> list[dict]:
    """Prompts that do not fit in the context beside the reply lose the end of their input, as
    `finetune --truncate` cuts training examples (llmkit.data.templates.fit_field); a note says how many.
    `lead`: for a fine-tune's own text template, the tokens after the prompt (the response's wording
    before its target), the prompt then encoded as the template encodes it; None for other prompts.
    `shown_field`: the input's name in the user's records, where it was copied to the template's."""
    shown_field = shown_field or input_field
    from llmkit.data.templates import encode_chat_prompt, fit_fields, plain_fields, text_fields
    from llmkit.inference.engine import context_limit, prompt_keep
    from llmkit.inference.prompts import chat_turns

    limit = context_limit(loaded.model)
    if limit is None:
        return records
    # what llmkit generate and chat keep of a prompt: the context less the reply (the last new token is never fed
    # back), but at least half of it, a longer reply sliding the window as generate's does (until 2026-12-07 eval
    # kept only the context less the reply: a prompt of 49 tokens where generate's was 64, other predictions)
    room = prompt_keep(limit, max_new_tokens)
    refuse_a_reply_as_long_as_the_context(max_new_tokens, limit)
    tokenizer = loaded.tokenizer

    def encode(record: dict, where: str = "a record") -> list[int]:
        text = render_template(template, record, input_field, where)
        if chat:
            return encode_chat_prompt(chat_turns(record, text), tokenizer)
        if lead is None:
            return [0] + tokenizer.encode(text)  # the document-start token, the prompt
        from llmkit.data.templates import encode_rendered

        return [0] + encode_rendered(text, tokenizer) + lead

    # the prompt's text fields, longest cut first, as finetune --truncate cuts them (an "{input}" the records
    # lack stands for the input field, and is cut as that)
    fields = [input_field, *plain_fields(template, "--prompt-template")]
    fitted, cut = [], 0
    for i, record in enumerate(records):
        shorter = fit_fields(lambda r: encode(r, place(records, i)), record, fields, tokenizer, room)
        if shorter is None:  # the wording alone is too long: the engine would cut the instruction off
            texts = text_fields(record, fields)
            wording = len(encode({**record, **dict.fromkeys(texts, "")}))
            cut_what = repr(shown_field) if texts == [input_field] else "text fields"
            raise UserError(f"{place(records, i)}: even with its {cut_what} cut, the prompt does not fit in the "
                            f"{room} tokens a prompt may take of the context ({limit}) beside --max-new-tokens "
                            f"{max_new_tokens} (the template's wording alone takes {wording}); lower --max-new-tokens or "
                            "shorten --prompt-template")
        cut += shorter is not record
        fitted.append(shorter)
    fitted = keeping_places(records, fitted)
    if cut:
        from llmkit.console import note

        note(f"{cut} of {len(records)} prompts did not fit in the {room} tokens a prompt may take of the context "
             f"({limit} tokens) beside --max-new-tokens {max_new_tokens}, as llmkit generate and chat keep one: the end of "
             f"their {shown_field!r} (of their longest text field, where the prompt has several) was left out, as "
             "finetune --truncate does")
    return fitted


def generate_predictions(loaded, cfg):
    from llmkit.data.templates import encode_chat_prompt
    from llmkit.inference.prompts import chat_turns

    from llmkit.eval import names as metric_names

    records = load_records(cfg.data, cfg.split, cfg.limit)
    task = loaded.task
    chat = task is not None and task.is_chat
    unanswerable = metric_names.no_answer_allowed(metric_names.family(metric_names.parse_metrics(cfg.metrics), metric_names.TEXT))
    if cfg.text_field is None and cfg.reference_field is None and "messages" in records[0]:
        if cfg.prompt_template is not None:
            raise UsageError("--prompt-template fills a record's fields; conversations (\"messages\") are rendered with the "
                            "chat template: leave it out")
        prompts, references = _conversations(records, loaded, chat, cfg.max_new_tokens)
        return _generate(loaded, cfg, prompts, references, chat)
    # A fine-tune's own fields first: the ones its template was trained on (then llmkit's prompt/response).
    trained = task.text_template if task is not None else None
    from llmkit.data.templates import Rendered, encode_rendered, plain_fields, response_frame

    # a --prompt-template's own text placeholders first: it names the input (`German: {de}` asked for --field de too);
    # not one holding a number (`Item {id}.`) or the references
    from llmkit.jsonl import field_value

    named = tuple(name for name in (plain_fields(cfg.prompt_template, "--prompt-template") if cfg.prompt_template is not None
                                    else ()) if name != cfg.reference_field and isinstance(field_value(records[0], name), str))
    inputs = named + tuple(f for f in [(trained or {}).get("input_field")] if f) + INPUT_FIELDS
    targets = tuple(f for f in [(trained or {}).get("target_field")] if f) + REFERENCE_FIELDS + ("response",)
    input_field = pick_field(records, cfg.text_field, inputs, "model input (source/document)", "--field")
    reference_field = pick_field(records, cfg.reference_field, targets, "references (target/summary)", "--reference-field")
    # A chat checkpoint gets the (templated) input as a user message; a text-template checkpoint
    # its own prompt template; a base model "{input}\n" unless --prompt-template says otherwise.
    default = placeholder(input_field) if chat else _trained_prompt(task) or placeholder(input_field) + "\n"
    template = cfg.prompt_template or default
    for i, r in enumerate(records):
        text_of(r, input_field, place(records, i))  # a null input would be rendered as "None"
    lead, tail = "", ""
    templated = trained is not None and not chat and cfg.prompt_template is None
    shown_field = input_field  # (what the user's records call it, for the notes)
    if templated:
        if input_field != trained["input_field"]:  # --field picks the text the trained prompt's field holds
            records = keeping_places(records, [{**r, trained["input_field"]: r[input_field]} for r in records])
            input_field = trained["input_field"]
        # The response's own wording around the target ("\nEnglish: {target}") is the model's to
        # write, not the prediction: the lead is given with the prompt, as in training, the tail cut off.
        lead, tail = response_frame(trained)
    lead_ids = encode_rendered(Rendered.all_wording(lead), loaded.tokenizer, loaded.tokenizer.encode_continuation) if lead else []
    records = _fit_prompts(records, template, input_field, loaded, chat, cfg.max_new_tokens, lead_ids if templated else None,
                           shown_field)
    prompts = [render_template(template, r, input_field, place(records, i)) for i, r in enumerate(records)]
    if chat:
        prompts = [encode_chat_prompt(chat_turns(r, p), loaded.tokenizer) for r, p in zip(records, prompts)]
    elif templated:
        shown = [p + lead for p in prompts]  # predictions.jsonl records the prompt as text, without the start token
        prompts = [[start_id(loaded)] + encode_rendered(p, loaded.tokenizer) + lead_ids for p in prompts]
    references = []
    for i, r in enumerate(records):
        value = r[reference_field]
        refs = [value] if isinstance(value, str) else list(value) if isinstance(value, list) else None
        if refs == [] and unanswerable:  # (SQuAD 2.0's no answer: scored against the empty answer)
            refs = [""]
        if refs == []:
            raise UserError(f"{place(records, i)} field {reference_field!r} is an empty list; give at least one reference")
        if not refs or not all(isinstance(x, str) for x in refs):
            raise UserError(f"{place(records, i)} field {reference_field!r} is not text (or a list of texts)")
        references.append(refs)
    predictions, references, extras = _generate(loaded, cfg, prompts, references, chat)
    if templated:
        for extra, text in zip(extras, shown):
            extra["prompt"] = text
    if tail.strip():
        predictions = [p.removesuffix(tail.strip()).rstrip() for p in predictions]
    return predictions, references, extras


def _conversations(records: list[dict], loaded, chat: bool, max_new_tokens: int) -> tuple[list[list[int]], list[list[str]]]:
    """Records of {"messages": [...]} (what finetune trains on and `chat -o` writes): the history
    before the last assistant turn is the prompt, that turn the reference."""
    from llmkit.data.templates import encode_chat_prompt, fit_conversation, record_messages
    from llmkit.inference.engine import context_limit, prompt_keep

    if not chat:
        raise UserError("the data holds conversations (\"messages\"), which only a chat fine-tune reads; evaluate a chat "
                        "checkpoint, or give records with an input and a reference field (--field, --reference-field)")
    limit = context_limit(loaded.model)
    if limit is not None:
        refuse_a_reply_as_long_as_the_context(max_new_tokens, limit)
    prompts, references, trimmed, cut = [], [], 0, 0
    for i, record in enumerate(records):
        messages = record_messages(record, place(records, i), suggest_template=False)  # (eval has no --template)
        if messages[-1]["role"] != "assistant" or len(messages) < 2:
            raise UserError(f"{place(records, i)}: its messages must end with the assistant's reply, the reference")
        history = messages[:-1]
        if limit is not None:  # (as llmkit chat keeps a history: the oldest exchanges, then the end of the last message)
            budget = prompt_keep(limit, max_new_tokens)
            history, dropped, last_cut = fit_conversation(history, loaded.tokenizer, budget)
            if last_cut is None:
                raise UserError(f"{place(records, i)}: the chat's wording around its last message alone takes more than the "
                                f"{budget} tokens a prompt may take of the context of {limit} beside --max-new-tokens "
                                f"{max_new_tokens}; lower --max-new-tokens")
            trimmed, cut = trimmed + dropped, cut + bool(last_cut)
        prompts.append(encode_chat_prompt(history, loaded.tokenizer))
        references.append([messages[-1]["content"]])
    from llmkit.console import note

    if trimmed:
        note(f"{trimmed} earlier message(s) were left out of conversations too long for the context ({limit} "
             "tokens with room for a reply), oldest first, as llmkit chat does")
    if cut:
        note(f"{cut} conversation(s) kept too long a last message for the context: its end was left out, as llmkit chat "
             "cuts one")
    return prompts, references


def refuse_a_reply_as_long_as_the_context(max_new_tokens: int, limit: int) -> None:
    """A reply as long as the model's context or longer would slide past its whole prompt: a slip
    (said with a value to give: the flag may not have been typed, its default being 64)."""
    if max_new_tokens >= limit:
        raise UserError(f"--max-new-tokens {max_new_tokens} is as long as the model's context ({limit} tokens) or longer: "
                        "each prediction would slide past its whole prompt; give a lower one, such as --max-new-tokens "
                        f"{max(1, limit // 4)}")


def _generate(loaded, cfg, prompts: list, references: list[list[str]], chat: bool):
    from llmkit.inference.engine import GenerationParams, Generator, context_limit, needs_window
    from llmkit.inference.prompts import chat_stop_ids

    params = GenerationParams(max_new_tokens=cfg.max_new_tokens, stop=list(cfg.stop), seed=cfg.seed, temperature=0.0,
                              **cfg.beams.params())
    broken = sum(1 for refs in references if any(stop in r.strip() for r in refs for stop in cfg.stop))
    if broken:  # (a multi-line reply or summary, and predictions cut at their first line: scores that measure the cut)
        from llmkit.console import note

        shown = ", ".join(repr(stop) for stop in cfg.stop)
        note(f"{broken} of {len(references)} references hold the stop string {shown} (--stop), where predictions "
             "end; --stop '' lets a fine-tuned model end with its end token instead")
    generator = Generator.for_checkpoint(loaded, compile=cfg.inference.compile)
    limit = context_limit(loaded.model)
    sliding = 0 if limit is None else sum(
        needs_window(len(generator.encode_prompt(p)) if isinstance(p, str) else len(p), cfg.max_new_tokens, limit)
        for p in prompts)
    if sliding and cfg.beams.num_beams > 1:  # (before anything is generated: beam search keeps the whole within the context)
        raise UserError(f"{sliding} of {len(prompts)} prompts + --max-new-tokens {cfg.max_new_tokens} exceed the context ({limit} "
                        "tokens), which beam search keeps them within; lower --max-new-tokens, or leave out --num-beams")
    if sliding:  # (as llmkit generate says it)
        from llmkit.console import note

        note(f"{sliding} of {len(prompts)} prompts + --max-new-tokens {cfg.max_new_tokens} exceed the context ({limit} "
             "tokens): a prediction that runs that long slides the window, as llmkit generate's does")
    stops = chat_stop_ids(loaded.tokenizer) if chat else None
    bar, advance = _progress_bar(len(prompts), "generating")
    completions = []
    with bar:
        for start in range(0, len(prompts), cfg.batch_size):
            chunk = prompts[start : start + cfg.batch_size]
            completions.extend(
                generator.complete(chunk, params, batch_size=cfg.batch_size, prompt_offset=start, extra_stop_ids=stops)
            )
            advance(len(chunk))
    predictions = [c.text.strip() for c in completions]
    extras = [{"prompt": c.prompt, "finish_reason": c.finish_reason} for c in completions]
    return predictions, references, extras



# ---------------------------------------------------------------------------------------------
# classification: multiple choice, classifier checkpoints, label scoring



LABEL_FIX = "; fix or drop the record, or name the classes with --labels"


def _choice_index(value, choices: list[str], where: str) -> int:
    """The index of a multiple-choice record's right choice: its label is that index (a number, or
    digits), or the choice's text."""
    fix = "; fix or drop the record"
    if isinstance(value, bool) or value is None:
        raise UserError(f"{where}: label {json.dumps(value)} is not a choice's index or text")
    if isinstance(value, str) and value.strip():
        value = value.strip()  # (a CSV's ` 1`, written after a comma and a space: read as text, as every CSV cell is)
    if isinstance(value, int):
        if not 0 <= value < len(choices):
            raise UserError(f"{where}: label {value} is out of range for {len(choices)} choices{fix}")
        return value
    if isinstance(value, str) and value.isascii() and value.isdigit() and int(value) < len(choices):
        # a choice's index, as a multiple-choice label is: unless it is another choice's text too, which it was read as
        if value in choices and choices.index(value) != int(value):
            raise UserError(f"{where}: label {value!r} is the index of choice {int(value) + 1} ({choices[int(value)]!r}) "
                            f"and the text of choice {choices.index(value) + 1}; write the right choice's index as a number")
        return int(value)
    if isinstance(value, str) and value in choices:
        return choices.index(value)
    raise UserError(f"{where}: label {value!r} is not one of {', '.join(choices)}{fix}")


def _the_trained_field(pick, trained: str | None, flag: str) -> str:
    """`pick()`, whose refusal says where a field it looked for came from: the classifier's task.json
    (its fine-tune's --field / --label-field), not a flag this command was given."""
    try:
        return pick()
    except UserError as exc:
        if trained is None:
            raise
        raise UserError(f"{exc} ({trained!r} is the field the classifier was fine-tuned on, from its task.json; "
                        f"{flag} NAME reads another)") from None


def classification(loaded, cfg):
    """(metrics, prediction records) of multiple-choice records (`choices`) or of labelled texts."""
    records = load_records(cfg.data, cfg.split, cfg.limit)
    trained = loaded.task if loaded.task is not None and loaded.task.is_classifier else None
    # (a classifier fine-tuned on named fields reads them by default, as its fine-tune read its validation data)
    own = trained.label_field if trained and cfg.label_field is None else None
    label_field = _the_trained_field(lambda: pick_field(records, cfg.label_field or own, LABEL_FIELDS, "labels", "--label-field"),
                                     own, "--label-field")
    with_choices = next((i for i, r in enumerate(records) if "choices" in r), None)
    if with_choices not in (None, 0):  # (the first record decides the kind: this one's choices were ignored)
        raise UserError(f"{place(records, with_choices)} has 'choices' and {place(records, 0)} has none; multiple-choice data gives every "
                        "record its choices, labelled texts none")
    if "choices" in records[0]:  # multiple choice, lm-eval style
        return _multiple_choice(loaded, cfg, records, label_field)
    return _labelled_texts(loaded, cfg, records, label_field)


def _multiple_choice(loaded, cfg, records: list[dict], label_field: str):
    """Each record's choices scored by likelihood after its context: accuracy and accuracy_norm."""
    from llmkit.eval.choice import context_cut_note, score_choices
    from llmkit.eval.metrics import classification_scores

    task = loaded.task
    if callable(getattr(loaded.model, "classify", None)):
        # (a masked LM's classifier has no causal base to send the user to: that is refused too)
        base = "evaluate its base checkpoint, or " if loaded.config.objective == "clm" else ""
        raise UserError(f"{loaded.artifact.path} is a classifier (labels: "
                        f"{', '.join(map(str, task.labels or []))}): it has no language-model head to score "
                        f"multiple-choice records ('choices') with; {base}give labelled texts")
    pick_field(records, "choices", ("choices",), "answer choices", "--field")  # every record has them
    if cfg.labels:  # known only from the data, read here once (the model is loaded, nothing written yet)
        raise UsageError(f"--labels would change nothing here (--data {cfg.data} holds multiple-choice records, each with "
                        "its own 'choices'; --labels names the classes of labelled texts); leave it out")
    context_field = pick_field(records, cfg.text_field, CONTEXT_FIELDS, "question/context", "--field")
    examples, gold, repeated = [], [], []
    for i, r in enumerate(records):
        choices = r["choices"]
        if not isinstance(choices, list) or not all(isinstance(c, str) for c in choices):
            raise UserError(f"{place(records, i)}: 'choices' must be a list of strings")
        if len(choices) < 2:  # (one choice is always right: accuracy 1.0 from a record that measures nothing)
            raise UserError(f"{place(records, i)}: 'choices' holds {len(choices)} choice{'' if choices else 's'}; "
                            "a multiple-choice record needs two or more")
        if len(set(choices)) < len(choices):
            repeated.append(i)
        if (blank := next((k for k, c in enumerate(choices) if not c.strip()), None)) is not None:
            raise UserError(f"{place(records, i)}: choice {blank + 1} is empty (no token to score, so it would always win); "
                            "give every choice its text")
        context = (render_template(cfg.prompt_template, r, context_field, place(records, i)) if cfg.prompt_template
                   else text_of(r, context_field, place(records, i)))
        examples.append((context, choices))
        gold.append(_choice_index(r[label_field], choices, place(records, i)))
    framed = _trained_framing(loaded, cfg, records, context_field, "choice", [c for _, c in examples])
    if framed is not None:
        examples = [(framed_context, choices) for framed_context, (_, choices) in zip(framed[0], examples)]
    bar, advance = _progress_bar(sum(len(c) for _, c in examples), "scoring choices")
    cut: list[int] = []
    context_cut: set[int] = set()
    with bar:
        scores = score_choices(
            loaded.model, loaded.tokenizer, examples, prefix_token=start_id(loaded), pad_id=_pad_id(loaded.tokenizer),
            batch_size=cfg.batch_size, progress=advance, cut=cut, context_cut=context_cut,
            encode_choice=framed[1] if framed is not None else None
        )
    from llmkit.console import note

    if repeated:  # (equal choices score equally and a tie goes to the first: a later copy never wins)
        note(f"{len(repeated):,} of {len(examples):,} records give a choice twice ({place(records, repeated[0])} first); "
             "a tie goes to the first copy, so a label naming a later one is always scored wrong")
    if context_cut:  # as eval --task says it
        note(context_cut_note(len(context_cut), len(examples), int(loaded.model.config.context_length), "records",
                              shots=False))
    if cut:
        note(f"{len(cut)} choice(s) longer than the model's context were scored on their last tokens only "
             "(accuracy_norm still divides by the whole choice's length)")
    predicted = [s.prediction for s in scores]
    metrics = classification_scores(predicted, gold)
    metrics["accuracy_norm"] = sum(int(s.prediction_norm == g) for s, g in zip(scores, gold)) / len(gold)
    records_out = [
        {"task": "multiple_choice", "index": i, "label": g, "prediction": s.prediction, "prediction_norm": s.prediction_norm, "logliks": s.logliks}
        for i, (s, g) in enumerate(zip(scores, gold))
    ]
    return metrics, records_out


def _label_names(loaded, cfg) -> tuple[list[str], list | None]:
    """The class names labelled texts are scored with (--labels, else a classifier's own), and a
    classifier's trained labels (None for a language model scoring names zero-shot)."""
    task = loaded.task
    names = [str(n) for n in (cfg.labels or (task.labels if task is not None else None) or [])]
    trained = task.labels if task is not None and task.labels and callable(getattr(loaded.model, "classify", None)) else None
    if cfg.labels and trained and len(cfg.labels) != len(trained):
        raise UserError(f"--labels names {len(cfg.labels)} labels but the classifier was trained on {len(trained)} "
                        f"({', '.join(map(str, trained))}); give {len(trained)} names, in that order, or leave --labels out")
    if cfg.labels and trained:
        # --labels renames the classes by position: a trained name at another position would swap classes silently
        moved = [str(n) for i, n in enumerate(cfg.labels) if str(n) in map(str, trained) and str(trained[i]) != str(n)]
        if moved:
            raise UserError(f"--labels puts the classifier's own class {moved[0]!r} at another position: its classes are "
                            f"{', '.join(map(str, trained))} in that order, and --labels renames them by position; give "
                            "them in that order, or leave --labels out")
    if len(names) == 1:
        raise UserError(f"classification needs at least two labels, got only {names[0]!r}; pass --labels A,B,...")
    if not names:
        raise UserError(
            "classification needs label names: a classification checkpoint (task.json 'labels'), "
            "--labels NAME,NAME, or multiple-choice data with a 'choices' field"
        )
    return names, trained


def _labelled_texts(loaded, cfg, records: list[dict], label_field: str):
    """Texts with labels: a classifier's predictions, or zero-shot the label name most likely after
    the text."""
    from llmkit.eval.choice import context_cut_note, score_choices
    from llmkit.eval.metrics import classification_scores

    if "accuracy_norm" in metric_names.parse_metrics(cfg.metrics):
        raise UserError(metric_names.NORM_NEEDS_CHOICES)
    task = loaded.task
    names, trained = _label_names(loaded, cfg)
    classify = getattr(loaded.model, "classify", None)
    # (a classifier reads the field its fine-tune did: eval took `document` where that took `sentence`)
    fields = CLASSIFY_TEXT_FIELDS + tuple(f for f in TEXT_FIELDS if f not in CLASSIFY_TEXT_FIELDS) if callable(classify) \
        else TEXT_FIELDS + ("sentence",)
    trained_field = task.text_field if callable(classify) and task is not None else None  # (its fine-tune's --field)
    trained_field = trained_field if cfg.text_field is None else None
    text_field = _the_trained_field(lambda: pick_field(records, cfg.text_field or trained_field, fields, "text to classify",
                                                       "--field"), trained_field, "--field")
    # one reader of labels, the fine-tune's: a classifier's own classes read a label as its fine-tune read its
    # --val-data (the figures it recorded); other names (--labels) alike
    own = task.trained_labels if trained and not cfg.labels else None
    reader = own or Labels(names=names, original=list(names), called="the classes")
    gold = [reader.index(r[label_field], place(records, i), LABEL_FIX) for i, r in enumerate(records)]
    texts = [text_of(r, text_field, place(records, i)) for i, r in enumerate(records)]
    if callable(classify):
        predicted = _classifier_predictions(loaded, texts, cfg.batch_size)
        how = "classifier"
    else:
        # A language model without a classification head: pick the label whose name is most likely
        # after the (templated) text, zero-shot.
        framed = _trained_framing(loaded, cfg, records, text_field, "label", [names] * len(records))
        template = cfg.prompt_template or placeholder(text_field) + "\n"
        # each behind the delimiter (score_choices), or after the fine-tune's own framing
        examples = ([(context, names) for context in framed[0]] if framed is not None else
                    [(render_template(template, r, text_field, place(records, i)), names) for i, r in enumerate(records)])
        bar, advance = _progress_bar(len(examples) * len(names), "scoring labels")
        context_cut: set[int] = set()
        with bar:
            scores = score_choices(
                loaded.model, loaded.tokenizer, examples, prefix_token=start_id(loaded), pad_id=_pad_id(loaded.tokenizer),
                batch_size=cfg.batch_size, progress=advance, context_cut=context_cut,
                encode_choice=framed[1] if framed is not None else None, as_read=True
            )
        if context_cut:
            from llmkit.console import note

            note(context_cut_note(len(context_cut), len(examples), int(loaded.model.config.context_length), "texts",
                                  shots=False))
        predicted = [s.prediction for s in scores]
        logliks = [s.logliks for s in scores]
        how = "label likelihood"
    # a trained classifier's classes in its id order, as finetune's val_f1 sums them (eval reproduces it to the bit);
    # names otherwise, in classification_scores' order (which a --predictions file of them gets too)
    metrics = (classification_scores(predicted, gold, label_names=dict(enumerate(names))) if trained
               else classification_scores([names[p] for p in predicted], [names[g] for g in gold]))
    import numpy as np

    from llmkit.scores import one_class_answer

    confusion = np.zeros((len(names), len(names)), dtype=np.int64)
    np.add.at(confusion, (np.asarray(gold, dtype=np.int64), np.asarray(predicted, dtype=np.int64)), 1)
    said = one_class_answer(confusion, names, who="the classifier" if trained else "the model")
    if said:  # (accuracy 0.52 read as a figure, where finetune's validation line said this)
        from llmkit.console import note

        note(said)
    records_out = [
        {"task": "classification", "method": how, "index": i, "text": t, "label": names[g], "prediction": names[p]}
        for i, (t, g, p) in enumerate(zip(texts, gold, predicted))
    ]
    if how == "label likelihood":  # each label name's log-likelihood after the text, as docs/eval.md says
        for record, scored in zip(records_out, logliks):
            record["logliks"] = scored
    return metrics, records_out


def _classifier_predictions(loaded, texts: list[str], batch_size: int) -> list[int]:
    """Batched `model.classify(idx, attention_mask) -> logits [B, n_labels]` (right padding), each
    text at a width of its own (its length rounded up, as llmkit.eval.loglik runs a request), so
    that --batch-size changes no bit: padded to its batch's longest row, a text's logits changed in
    the last bits with the batch (15 of 16 texts at batch 1 against 8), which flips a near-tie."""
    import torch

    from llmkit.eval.loglik import forward_batches, padded_width
    from llmkit.model.ensemble import classifier_input_limit

    tokenizer = loaded.tokenizer
    # an ensemble's members each cut the rows to their own limit: the rows are as long as the longest
    limit = max(getattr(loaded.model, "input_limits", None) or [classifier_input_limit(loaded.config, loaded.task)])
    first = start_id(loaded)
    rows = [([first] + tokenizer.encode(t))[:limit] for t in texts]
    widths = [padded_width(len(row), limit) for row in rows]
    predicted: list[int] = [0] * len(rows)
    device = next(loaded.model.parameters()).device
    with torch.inference_mode():
        for batch, forward_rows in forward_batches(loaded.model, widths, batch_size, max_tokens=len(rows) * limit):
            idx = torch.full((forward_rows, widths[batch[0]]), _pad_id(tokenizer), dtype=torch.long)
            mask = torch.zeros_like(idx)
            mask[:, 0] = 1  # (the filler rows: one position each, so that none is empty)
            for b, i in enumerate(batch):
                idx[b, : len(rows[i])] = torch.tensor(rows[i])
                mask[b, : len(rows[i])] = 1
            logits = loaded.model.classify(idx.to(device), attention_mask=mask.to(device))[: len(batch)]
            if not torch.isfinite(logits).all():  # argmax of NaN picks a class all the same
                raise NotFinite()
            for i, label in zip(batch, logits.argmax(dim=-1).tolist()):
                predicted[i] = int(label)
    return predicted
