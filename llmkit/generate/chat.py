"""`llmkit chat CKPT`: talk to a fine-tuned checkpoint in the terminal, streaming its replies.

The prompt is rendered with the checkpoint's own template (task.json, written by
`llmkit finetune`; docs/finetune.md): a chat checkpoint sees the whole conversation through
its role tokens, a text-template checkpoint (translate, summarize, ...) one input at a time.
A checkpoint without task.json is treated as a chat model when its vocabulary has role tokens.

History is kept within the context length: the oldest exchanges are dropped (the system
message stays) until the prompt plus --max-new-tokens fits.
"""

from __future__ import annotations

from pathlib import Path
from typing import Callable, Optional

from llmkit.generate.config import ChatConfig
from llmkit.stage_command import argument, stage_command

COMMANDS = {"/exit": "leave", "/quit": "leave", "/reset": "forget the conversation", "/help": "show the commands"}


class ChatSession:
    """One conversation with a model: history, prompt rendering within the context, replies."""

    def __init__(self, model, tokenizer, task, params, system: str | None = None, compile: bool = False):
        """`task`: the checkpoint's TaskRecord (None: a base model, chatted to with the chat template)."""
        from llmkit.data.templates import chat_template, check_tokenizer
        from llmkit.generate.engine import Generator

        self.model, self.tokenizer, self.params = model, tokenizer, params
        self.template = (task.template if task is not None else None) or chat_template()
        if self.template["type"] == "chat":
            check_tokenizer(self.template, tokenizer)
        elif system:
            from llmkit.errors import UserError

            raise UserError(f"this checkpoint uses the text template {self.template['name']!r}, which has no system message; leave out --system")
        self.system = system
        self.history: list[dict[str, str]] = []
        self.generator = Generator(model, tokenizer, compile=compile)
        arch = getattr(model.config, "arch", "gpt")
        self.limit = None if arch == "lstm" else int(model.config.context_length)

    def reset(self) -> None:
        self.history = []

    def prompt_ids(self, user_text: str) -> list[int]:
        """The prompt for the next reply, the oldest exchanges dropped until it fits."""
        from llmkit.data.templates import encode_chat_prompt, encode_text_prompt

        if self.template["type"] != "chat":
            ids = encode_text_prompt(self.template, user_text, self.tokenizer)
            return ids if self.limit is None else ids[-max(1, self.limit - self.params.max_new_tokens):]
        turn = {"role": "user", "content": user_text}
        history = list(self.history)
        while True:
            head = [{"role": "system", "content": self.system}] if self.system else []
            ids = encode_chat_prompt(head + history + [turn], self.tokenizer)
            if self.limit is None or len(ids) + self.params.max_new_tokens <= self.limit or not history:
                break
            history = history[2:] if len(history) >= 2 else []  # one user + assistant exchange
        self.history = history
        return ids

    def reply(self, user_text: str, on_text: Callable[[str], None] | None = None) -> str:
        from llmkit.data.templates import ROLES

        ids = self.prompt_ids(user_text)
        role_ids = [self.tokenizer.special_ids[f"<|{r}|>"] for r in ROLES if f"<|{r}|>" in self.tokenizer.special_ids]
        stream = (lambda _row, piece: on_text(piece)) if on_text else None
        completion = self.generator.complete([ids], self.params, on_text=stream, extra_stop_ids=role_ids)[0]
        text = completion.text.strip()
        if self.template["type"] == "chat":
            self.history += [{"role": "user", "content": user_text}, {"role": "assistant", "content": text}]
        return text


def _chat(config: ChatConfig, *, checkpoint: Path, out: Optional[Path], force: bool) -> None:
    """Chat with a fine-tuned checkpoint in the terminal (streaming; /reset, /exit)."""
    import sys

    from llmkit.console import err
    from llmkit.generate.stage import check_output_file
    from llmkit.model.io import load_checkpoint
    from llmkit.runtime import resolve_device

    check_output_file(out, force, inputs=[checkpoint])
    loaded = load_checkpoint(checkpoint, device=resolve_device(config.inference.device), purpose="chat")
    params = config.sampling.params(config.seed)
    session = ChatSession(loaded.model, loaded.tokenizer, loaded.task, params, system=config.system, compile=config.inference.compile)
    transcript = Transcript(out, config.system)
    name = session.template["name"]
    if loaded.task is None:
        err.print(f"note: {checkpoint} was never fine-tuned to chat (it has no task.json): it will continue the conversation "
                  "as text; fine-tune it with llmkit finetune --template chat for replies", soft_wrap=True, markup=False)
    err.print(f"chatting with {checkpoint} (template {name}); {', '.join(COMMANDS)}; Ctrl-D to leave", soft_wrap=True)
    turn = 0
    while True:
        sys.stdout.write("you> ")
        sys.stdout.flush()
        line = sys.stdin.readline()
        if not line:
            sys.stdout.write("\n")
            break
        text = line.rstrip("\n")
        if not text.strip():
            continue
        if text.strip() in ("/exit", "/quit"):
            break
        if text.strip() == "/reset":
            session.reset()
            transcript.new_conversation()
            err.print("(conversation forgotten)")
            continue
        if text.strip() == "/help":
            err.print("; ".join(f"{c}: {what}" for c, what in COMMANDS.items()))
            continue
        sys.stdout.write("bot> ")
        session.params.seed = config.seed + turn  # a fresh but reproducible draw every turn
        reply = session.reply(text, on_text=lambda piece: (sys.stdout.write(piece), sys.stdout.flush()))
        transcript.add(text, reply)
        sys.stdout.write("\n")
        sys.stdout.flush()
        turn += 1
    if out is not None and transcript.saved:
        err.print(f"wrote {len(transcript.saved)} conversation(s) to {out}")


class Transcript:
    """The conversations of a session in FILE.jsonl, one {"messages": [...]} record each (the
    format `llmkit finetune --data` and `llmkit generate --prompts` read); rewritten whole after
    every reply, so the file is complete whenever the session ends."""

    def __init__(self, path: Path | None, system: str | None):
        self.path, self.system = path, system
        self.conversations: list[list[dict[str, str]]] = []
        self.new_conversation()

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
        import os

        tmp = self.path.with_name(f".{self.path.name}.tmp")
        with open(tmp, "w", encoding="utf-8") as handle:
            for messages in self.saved:
                handle.write(json.dumps({"messages": messages}, ensure_ascii=False) + "\n")
        os.replace(tmp, self.path)


chat = stage_command(
    "chat", ChatConfig, _chat,
    arguments=[argument("checkpoint", "Checkpoint artifact (a chat fine-tune from `llmkit finetune`).")],
    out="Save the conversations to this .jsonl file ({\"messages\": [...]} per conversation).", out_type=Optional[Path],
    force="Replace an existing -o file.",
    writes_artifact=False,
)
