"""`llmkit chat CKPT`: talk to a fine-tuned checkpoint in the terminal, streaming its replies.

The prompt is rendered with the checkpoint's own template (task.json, written by
`llmkit finetune`; docs/finetune.md): a chat checkpoint sees the whole conversation through
its role tokens, a text-template checkpoint (translate, summarize, ...) one input at a time.
A checkpoint without task.json is treated as a chat model when its vocabulary has role tokens,
or in its own template when it is an imported chat model (tokenizer/chat_template.jinja).

Within the context length the prompt keeps at least half of it, and a reply gets
--max-new-tokens up to what the prompt leaves: past that budget the oldest exchanges are dropped
first (the system message stays), then the end of the message itself is cut, as `finetune
--truncate` cuts a training input. A note says so the first time each happens.

A reply ends at the end-of-text token or at any other special token (a role token starts the next
turn; the start, padding and mask tokens have no place inside a reply, and decoded they would be
their literal names, fed back as ordinary text on the next turn).
"""

from __future__ import annotations

import re
from pathlib import Path
from typing import Callable, Optional

from llmkit.generate.config import ChatConfig
from llmkit.outputs import MARK, WrittenBy
from llmkit.stage_command import argument, stage_command

COMMANDS = {"/exit": "leave", "/quit": "leave", "/reset": "forget the conversation", "/help": "show the commands"}
ESCAPE = "//"  # a line starting with it is sent with one slash: a message that begins with a /word
TRANSCRIPTS = WrittenBy("a transcript chat wrote", "chat")  # (what --force may replace)


class ChatSession:
    """One conversation with a model: history, prompt rendering within the context, replies."""

    def __init__(self, model, tokenizer, task, params, system: str | None = None, compile: bool = False):
        """`task`: the checkpoint's TaskRecord (None: a base model, chatted to with the chat template)."""
        from llmkit.data.templates import chat_template, check_tokenizer
        from llmkit.inference.engine import Generator
        from llmkit.inference.prompts import chat_stop_ids

        self.model, self.tokenizer, self.params = model, tokenizer, params
        self.template = (task.template if task is not None else None) or chat_template()
        # (an imported chat model not fine-tuned in llmkit is prompted in its own template: encode_chat_prompt)
        if self.template["type"] == "chat":  # (its own template takes a system message, as generate's message prompts do)
            if not tokenizer.own_chat_template:
                check_tokenizer(self.template, tokenizer,
                                "so it cannot chat (an imported GPT-2 or Llama has none): continue text with llmkit generate "
                                "--prompt, or fine-tune it on prompt/response pairs (llmkit finetune --template plain) and generate")
        elif system:
            from llmkit.errors import UsageError

            raise UsageError(f"this checkpoint uses the text template {self.template['name']!r}, which has no system message; leave out --system")
        self.system = system
        self.history: list[dict[str, str]] = []
        self.generator = Generator(model, tokenizer, compile=compile)
        self.stop_ids = chat_stop_ids(tokenizer)  # (every special token but the end ones ends a reply)
        arch = getattr(model.config, "arch", "gpt")
        self.limit = None if arch == "lstm" else int(model.config.context_length)
        self.noted: set[str] = set()
        budget = self.prompt_budget()
        if system and budget is not None:  # known now: say so before the first message, not after it
            from llmkit.data.templates import encode_chat_prompt
            from llmkit.errors import UserError

            used = len(encode_chat_prompt([{"role": "system", "content": system}, {"role": "user", "content": ""}], tokenizer))
            if used > budget:
                raise UserError(f"--system takes {used} tokens with the chat's wording, more than the {budget} the context "
                                f"({self.limit}) leaves beside a reply; shorten it")

    def reset(self) -> None:
        self.history = []
        self.written = ""  # the last reply as the model wrote it (whitespace around it too): the transcript's

    def _note(self, key: str, message: str) -> None:
        if key not in self.noted:
            from llmkit.console import note

            self.noted.add(key)
            note(message)

    def prompt_budget(self) -> int | None:
        """Tokens the prompt may take: the context less the reply's room, but at least half of it,
        by the rule `llmkit generate` and `eval` keep a prompt with (engine.prompt_keep)."""
        from llmkit.inference.engine import prompt_keep

        if self.limit is None:
            return None
        return prompt_keep(self.limit, self.params.max_new_tokens)

    def prompt_ids(self, user_text: str) -> list[int]:
        """The prompt for the next reply within prompt_budget(): the oldest exchanges dropped,
        then the end of the message cut (never the template's wording or the start token)."""
        budget = self.prompt_budget()
        if self.template["type"] == "chat":
            ids, cut = self._chat_prompt(user_text, budget)
        else:
            ids, cut = self._text_prompt(user_text, budget)
        if cut:
            self._note("cut", f"a message that does not fit in the context ({self.limit} tokens) beside room for a reply "
                              f"(--max-new-tokens {self.params.max_new_tokens}) loses its end, as finetune --truncate cuts a "
                              "training input; a lower --max-new-tokens keeps more of it")
        return ids

    def _chat_prompt(self, user_text: str, budget: int | None) -> tuple[list[int], bool]:
        from llmkit.data.templates import encode_chat_prompt, fit_conversation

        head = [{"role": "system", "content": self.system}] if self.system else []
        messages = head + self.history + [{"role": "user", "content": user_text}]
        if budget is None:
            return encode_chat_prompt(messages, self.tokenizer), False
        fitted, dropped, cut = fit_conversation(messages, self.tokenizer, budget)
        if dropped:
            self._note("history", f"the oldest exchanges are left out of the prompt to fit the context ({self.limit} tokens "
                                  f"with room for a reply); /reset starts afresh")
        if cut is None:
            self._wording_too_long(budget)
        self.history = fitted[len(head):-1]
        return encode_chat_prompt(fitted, self.tokenizer), cut

    def _text_prompt(self, user_text: str, budget: int | None) -> tuple[list[int], bool]:
        from llmkit.data.templates import encode_text_prompt, fit_field

        if budget is None:
            return encode_text_prompt(self.template, user_text, self.tokenizer), False
        field = self.template["input_field"]
        record = {field: user_text}
        fitted = fit_field(lambda r: encode_text_prompt(self.template, r[field], self.tokenizer), record, field,
                           self.tokenizer, budget)
        if fitted is None:
            self._wording_too_long(budget)
        return encode_text_prompt(self.template, fitted[field], self.tokenizer), fitted is not record

    def _wording_too_long(self, budget: int) -> None:
        from llmkit.errors import UserError

        raise UserError(f"the prompt's own wording takes more than the {budget} tokens the context ({self.limit}) "
                        "leaves beside a reply; lower --max-new-tokens")

    def reply(self, user_text: str, on_text: Callable[[str], None] | None = None,
              on_start: Callable[[], None] | None = None) -> str:
        """The model's reply, stripped of the whitespace around it, streamed to `on_text` as it is
        made (the same text: whitespace is held back until text follows it); `written` keeps it as
        the model wrote it, as the history and the transcript do. `on_start` is called
        once the prompt is fitted and any note about it printed, just before the first token."""
        import dataclasses

        from llmkit.errors import NotFinite, UserError
        from llmkit.inference.engine import needs_window

        ids = self.prompt_ids(user_text)
        params = self.params
        if needs_window(len(ids), params.max_new_tokens, self.limit):
            room = self.limit - len(ids) + 1  # the last token is never fed
            params = dataclasses.replace(params, max_new_tokens=room, min_new_tokens=min(params.min_new_tokens, room))
            self._note("reply", f"--max-new-tokens {self.params.max_new_tokens} is more than the context ({self.limit} tokens) "
                                f"leaves beside the prompt: replies stop at what is left (here {params.max_new_tokens})")
        if on_start is not None:
            on_start()
        # The engine streams the final text: a character cut by the length is left out of both, a U+FFFD the
        # model wrote kept in both (a second filter here dropped the latter from the screen, not the transcript).
        stripped = _Stripped(on_text) if on_text else None
        stream = (lambda _row, piece: stripped(piece)) if stripped else None
        try:
            written = self.generator.complete([ids], params, on_text=stream, extra_stop_ids=self.stop_ids)[0].text
        except NotFinite as exc:
            raise UserError(exc.explained([(None, self.generator.model)])) from None
        if self.template["type"] == "chat":  # the reply as written, the whitespace around it too: the next turn's prompt
            # holds what the model made (a reply "ok\n" went on as "ok", ids a fine-tune never saw after it)
            self.history += [{"role": "user", "content": user_text}, {"role": "assistant", "content": written}]
        self.written = written
        return written.strip()


class _Stripped:
    """A stream of pieces with the whitespace around the whole left out, as the reply is stored:
    leading whitespace dropped, trailing whitespace held back until text follows it."""

    def __init__(self, write: Callable[[str], None]):
        self.write, self.started, self.held = write, False, ""

    def __call__(self, piece: str) -> None:
        if not self.started:
            piece = piece.lstrip()
            self.started = bool(piece)
        text = self.held + piece
        body = text.rstrip()
        self.held = text[len(body):]
        if body:
            self.write(body)


def _chat(config: ChatConfig, *, checkpoint: Path, out: Optional[Path], force: bool) -> None:
    """Chat with a fine-tuned checkpoint in the terminal (streaming; /reset, /exit, /help)."""
    import sys

    from llmkit.errors import UserError
    from llmkit.jsonl import check_unicode
    from llmkit.outputs import check_output_file

    if sys.stdout is None:  # (started with its standard output closed, `>&-`: Python then has none)
        raise UserError("the standard output is closed, and chat prints its replies there; give it a terminal, a file or a pipe")
    check_output_file(out, force, inputs=[checkpoint], ours=TRANSCRIPTS)
    if config.system is not None:
        check_unicode(config.system, "--system", "write it in UTF-8")
    if hasattr(sys.stdin, "reconfigure"):  # an undecodable byte typed is refused below, not a traceback
        sys.stdin.reconfigure(errors="surrogateescape")
    with Transcript(out, config.system, force) as transcript:
        session = _open_session(config, checkpoint)  # (its refusals have nothing to do with the transcript)
        try:
            _converse(config, session, transcript)
        except (KeyboardInterrupt, UserError) as stop:  # a SIGTERM, or a piped line refused: what was said so far is saved
            if out is not None:
                from llmkit.errors import add_advice

                add_advice(stop, f"the {len(transcript.saved)} conversation(s) before it are in {out}" if transcript.saved
                           else f"no exchange was finished, so nothing was written to {out}")
            raise
    if out is not None and transcript.saved:
        from llmkit.console import err

        err.print(f"wrote {len(transcript.saved)} conversation(s) to {out}")


def _open_session(config: ChatConfig, checkpoint: Path) -> ChatSession:
    """The checkpoint loaded into a session, its template named on stderr."""
    from llmkit.console import err, note
    from llmkit.model.io import load_checkpoint
    from llmkit.runtime import resolve_device

    loaded = load_checkpoint(checkpoint, device=resolve_device(config.inference.device), purpose="chat")
    sampling = config.sampling.with_recommended(loaded.sampling, getattr(config, "given", None), str(checkpoint))
    params = sampling.params(config.seed)
    session = ChatSession(loaded.model, loaded.tokenizer, loaded.task, params, system=config.system, compile=config.inference.compile)
    own = loaded.task is None and loaded.tokenizer.own_chat_template
    learned_own = "jinja" in session.template  # (fine-tuned in the model's own chat template: templates.own_chat_format)
    name = ("the model's own, from its import" if own else "the model's own, as fine-tuned" if learned_own
            else session.template["name"])
    if loaded.task is None and not own:
        note(f"{checkpoint} was never fine-tuned to chat (it has no task.json): it will continue the conversation "
             "as text; fine-tune it with llmkit finetune --template chat for replies")
    commands = f"; {', '.join(COMMANDS)}; Ctrl-D or Ctrl-C to leave" if _at_a_terminal() else ""  # (piped: none to type)
    err.print(f"chatting with {checkpoint} (template {name}){commands}", soft_wrap=True)
    return session


def _read_line(you: str) -> str:
    """The next line typed after the prompt `you`; "" at the end of the input or on Ctrl-C, which
    leaves as Ctrl-D does (a SIGTERM ends the command)."""
    import sys

    from llmkit.errors import Terminated

    sys.stdout.write(you)
    sys.stdout.flush()
    try:
        return sys.stdin.readline()
    except KeyboardInterrupt as stop:
        if isinstance(stop, Terminated):
            raise
        return ""


def _obeyed_command(command: str, session: ChatSession, transcript: Transcript, *, typed: bool, line_number: int) -> bool:
    """Whether the line was one of COMMANDS (but the leaving ones) and was carried out, or a
    mistyped one, reported; False for a message to the model."""
    from llmkit.console import err
    from llmkit.errors import UserError

    if command == "/reset":
        session.reset()
        transcript.new_conversation()
        err.print("(conversation forgotten)")
        return True
    if command == "/help":
        err.print("; ".join(f"{c}: {what}" for c, what in COMMANDS.items())
                  + f"; a line starting {ESCAPE} is sent with one /", soft_wrap=True, markup=False)
        return True
    if re.fullmatch(r"/\w+(\s.*)?", command):  # (a mistyped /rest, or `/system TEXT`, went to the model as a message)
        unknown = (f"unknown command {command}: the commands are {', '.join(COMMANDS)}; start the line with {ESCAPE} to "
                   "send it as a message")
        if not typed:  # a script's questions: one skipped would pair every later reply with the wrong one
            raise UserError(f"line {line_number} of the standard input: {unknown}")
        err.print(unknown, soft_wrap=True, markup=False)
        return True
    return False


def _converse(config: ChatConfig, session: ChatSession, transcript: Transcript) -> None:
    """The session itself: lines read, replies streamed, each exchange added to the transcript."""
    import sys

    from llmkit.console import err, write_generated
    from llmkit.errors import Terminated, UserError
    from llmkit.inference.sampling import row_seed
    from llmkit.jsonl import check_unicode, wide_encoding

    # Typed at a terminal, the prompts mark the turns; piped in (a script's questions), stdout holds
    # the replies alone, each ended by a newline (the prompts came out mixed into them, one more for
    # each blank line); -o's transcript keeps each reply whole.
    typed = _at_a_terminal()
    you, bot = ("you> ", "bot> ") if typed else ("", "")

    turn = 0
    line_number = 0
    while True:
        line = _read_line(you)
        if not line:
            sys.stdout.write("\n" if you else "")
            break
        line_number += 1
        text = line.rstrip("\n").removesuffix("\r")  # (a Windows line end, as generate's prompt files drop it)
        if line_number == 1:  # (a byte-order mark, as every file reader drops it)
            text = text.removeprefix("\ufeff")
            wide = None if typed else wide_encoding(line.encode("utf-8", "surrogateescape"))
            if wide:  # (Windows' "Unicode" text piped in: read as UTF-8 it is NULs between letters, or undecodable)
                raise UserError(f"the standard input is {wide} text; convert it to UTF-8 (iconv -f {wide} -t UTF-8)")
        if not text.strip():
            continue
        command = text.strip()
        if command in ("/exit", "/quit"):
            break
        if _obeyed_command(command, session, transcript, typed=typed, line_number=line_number):
            continue
        if text.lstrip().startswith(ESCAPE):
            text = text.replace(ESCAPE, "/", 1)
        try:
            check_unicode(text, "that line" if typed else f"line {line_number} of the standard input",
                          "type it again in UTF-8" if typed else "convert the input to UTF-8 (iconv -t UTF-8)")
        except UserError as error:
            if not typed:  # a script's questions: one skipped would pair every later reply with the wrong one
                raise
            err.print(f"error: {error}", soft_wrap=True, markup=False)
            continue
        session.params.seed = row_seed(config.seed, turn, 0)  # a fresh but reproducible draw every turn
        started = []

        def start() -> None:
            started.append(True)
            sys.stdout.write(bot)
            sys.stdout.flush()

        try:
            session.reply(text, on_text=write_generated, on_start=start)
        except UserError:  # (NaN scores: the error goes on a line of its own, not after "bot> "; piped, no empty reply)
            sys.stdout.write("\n" if started and bot else "")
            sys.stdout.flush()
            raise
        except KeyboardInterrupt as stop:  # Ctrl-C in a reply stops that reply, not the session
            if isinstance(stop, Terminated):
                raise
            sys.stdout.write("\n" if started else "")
            sys.stdout.flush()
            err.print("(reply stopped: that exchange is left out of the conversation and the transcript)")
            turn += 1
            continue
        # (as written: a transcript replayed, or fine-tuned on, holds the conversation the model saw)
        transcript.add(text, session.written)
        if session.template["type"] != "chat":
            transcript.new_conversation()  # each input stood alone: one exchange per record, as the model saw it
        sys.stdout.write("\n")
        sys.stdout.flush()
        turn += 1


def _at_a_terminal() -> bool:
    import sys

    return sys.stdin.isatty()


class Transcript:
    """The conversations of a session in FILE.jsonl, one {"messages": [...]} record each (the
    format `llmkit finetune --data` and `llmkit generate --prompts` read); rewritten whole after
    every reply, through a temporary sibling of its own renamed into place, so the file is
    complete whenever the session ends. One session writes FILE at a time: it holds the output's
    lock from entering to leaving."""

    def __init__(self, path: Path | None, system: str | None, force: bool = False):
        self.path, self.system, self.force = path, system, force
        self.conversations: list[list[dict[str, str]]] = []
        self.new_conversation()

    def __enter__(self) -> Transcript:
        import contextlib

        from llmkit.outputs import file_output_lock

        with contextlib.ExitStack() as stack:
            if self.path is not None:
                stack.enter_context(file_output_lock(self.path, self.force, TRANSCRIPTS))
            self.unlock = stack.pop_all()
        return self

    def __exit__(self, kind, error, trace) -> None:
        self.unlock.close()
        if self.path is not None and not self.saved:  # no exchange: nothing written, nothing replaced
            from llmkit.outputs import remove_made_parents

            remove_made_parents()
            if self.path.exists() and kind is None:
                from llmkit.console import note

                note(f"no exchange to save, so {self.path} is left as it was")

    @property
    def saved(self) -> list[list[dict[str, str]]]:
        """The conversations with at least one exchange."""
        return [messages for messages in self.conversations if any(m["role"] == "assistant" for m in messages)]

    def new_conversation(self) -> None:
        if not self.conversations or self.conversations[-1] in self.saved:
            self.conversations.append([{"role": "system", "content": self.system}] if self.system else [])

    def add(self, user_text: str, reply: str) -> None:
        self.conversations[-1] += [{"role": "user", "content": user_text}, {"role": "assistant", "content": reply}]
        if self.path is None:
            return
        import json

        from llmkit.outputs import replaced_file

        with replaced_file(self.path) as tmp, tmp.open("w", encoding="utf-8") as file:
            for messages in self.saved:
                # marked: a fine-tuning data set is {"messages": ...} records too, which --force must not replace
                file.write(json.dumps({MARK: "chat", "messages": messages}, ensure_ascii=False) + "\n")


chat = stage_command(
    "chat", ChatConfig, _chat,
    arguments=[argument("checkpoint", "Checkpoint artifact (a chat fine-tune from `llmkit finetune`).")],
    out="Save the conversations to this .jsonl file ({\"messages\": [...]} per conversation).", out_type=Optional[Path],
    force="Replace an existing -o file.",
    writes_artifact=False,
)
