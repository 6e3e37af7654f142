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
from typing import Annotated, Callable, Optional

import typer

COMMANDS = {"/exit": "leave", "/quit": "leave", "/reset": "forget the conversation", "/help": "show the commands"}


class ChatSession:
    """One conversation with a model: history, prompt rendering within the context, replies."""

    def __init__(self, model, tokenizer, task: dict | None, params, system: str | None = None):
        from llmkit.data.templates import chat_template, check_tokenizer
        from llmkit.generate.engine import Generator

        self.model, self.tokenizer, self.params = model, tokenizer, params
        self.template = (task or {}).get("template") or chat_template()
        if self.template["type"] == "chat":
            check_tokenizer(self.template, tokenizer)
        elif system:
            from llmkit.errors import UserError

            raise UserError(f"this checkpoint uses the text template {self.template['name']!r}, which has no system message; leave out --system")
        self.system = system
        self.history: list[dict[str, str]] = []
        self.generator = Generator(model, tokenizer)
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


def chat(
    checkpoint: Annotated[Path, typer.Argument(help="Checkpoint artifact (a chat fine-tune from `llmkit finetune`).")],
    system: Annotated[Optional[str], typer.Option("--system", help="System message that opens the conversation.")] = None,
    max_new_tokens: Annotated[int, typer.Option("--max-new-tokens", help="Longest reply in tokens.")] = 256,
    temperature: Annotated[float, typer.Option("--temperature", help="Sampling temperature (0 = greedy).")] = 0.7,
    top_k: Annotated[Optional[int], typer.Option("--top-k", help="Sample among the k most likely tokens.")] = 50,
    top_p: Annotated[Optional[float], typer.Option("--top-p", help="Sample within this probability mass.")] = None,
    device: Annotated[str, typer.Option("--device", help="cpu, cuda or auto.")] = "auto",
    seed: Annotated[int, typer.Option("--seed", help="Sampling seed.")] = 0,
) -> None:
    """Chat with a fine-tuned checkpoint in the terminal (streaming; /reset, /exit)."""
    import sys

    import torch

    from llmkit.console import err
    from llmkit.model.classifier import load_classifier
    from llmkit.generate.engine import GenerationParams

    if device == "auto":
        device = "cuda" if torch.cuda.is_available() else "cpu"
    loaded = load_classifier(checkpoint, device=device)
    if (loaded.task or {}).get("task") == "classify":
        from llmkit.errors import UserError

        raise UserError(f"{checkpoint} is a classifier (task classify); chat needs an SFT or language-model checkpoint")
    params = GenerationParams(max_new_tokens=max_new_tokens, temperature=temperature, top_k=top_k, top_p=top_p, seed=seed)
    session = ChatSession(loaded.model, loaded.tokenizer, loaded.task, params, system=system)
    name = session.template["name"]
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
            err.print("(conversation forgotten)")
            continue
        if text.strip() == "/help":
            err.print("; ".join(f"{c}: {what}" for c, what in COMMANDS.items()))
            continue
        sys.stdout.write("bot> ")
        session.params.seed = seed + turn  # a fresh but reproducible draw every turn
        session.reply(text, on_text=lambda piece: (sys.stdout.write(piece), sys.stdout.flush()))
        sys.stdout.write("\n")
        sys.stdout.flush()
        turn += 1
