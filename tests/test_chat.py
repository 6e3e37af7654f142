"""`llmkit chat`: the training template at inference, streaming, history within the context."""

from __future__ import annotations

import json

import pytest
import torch

from conftest import built_once
from test_finetune import build_base, write_jsonl

torch.set_num_threads(1)
# One worker runs them all: the fixtures (a base model and its chat fine-tune, about half a minute) are
# made once in any case (conftest.built_once), and no other worker then waits for them.
pytestmark = pytest.mark.xdist_group("chat")


@pytest.fixture(scope="session")
def base(shared_data, tmp_path_factory):
    return build_base(shared_data, tmp_path_factory)


@pytest.fixture(scope="session")
def chat_model(base, tmp_path_factory):
    """A chat fine-tune that learned to answer every question with the same sentence."""
    return built_once(tmp_path_factory, "chat", lambda root: _chat_finetune(base, root)) / "run"


def _chat_finetune(base, root):
    from llmkit.finetune.stage import FinetuneConfig, finetune

    questions = ["what is this", "tell me a story", "who are you", "is it raining", "how old are you", "where is the dog",
                 "what time is it", "do you like films", "say something", "which way is north"]
    rows = [{"messages": [{"role": "user", "content": q}, {"role": "assistant", "content": "Two dogs play in the snow."}]}
            for q in questions]
    data = write_jsonl(root / "chat.jsonl", rows)
    config = FinetuneConfig.build(task="sft", template="chat", batch_size=10, micro_batch=10, max_steps=40, lr=3e-3,
                            val_fraction=0.0, eval_every=0, save_every=0, log_every=40)
    finetune(base["checkpoint"], data, root / "run", config)


def _session(path, max_new_tokens=24, system=None):
    from llmkit.model.io import load_checkpoint
    from llmkit.generate.chat import ChatSession
    from llmkit.inference.engine import GenerationParams

    loaded = load_checkpoint(path)
    return ChatSession(loaded.model, loaded.tokenizer, loaded.task, GenerationParams(max_new_tokens=max_new_tokens), system=system)


def test_chat_replies_with_what_the_finetune_taught_and_streams_it(chat_model):
    session = _session(chat_model)
    assert session.template["name"] == "chat"
    pieces: list[str] = []
    reply = session.reply("what is your name", on_text=pieces.append)
    assert reply == "Two dogs play in the snow."
    assert "".join(pieces).strip() == reply and len(pieces) > 1
    assert session.history == [{"role": "user", "content": "what is your name"}, {"role": "assistant", "content": reply}]
    # NaN weights are named as generate and eval name them
    import torch

    from llmkit.errors import UserError

    with torch.no_grad():
        session.generator.model.final_norm.weight[0] = float("nan")
    with pytest.raises(UserError, match=r"^the model's outputs are not finite \(NaN or infinity\): its weight final_norm.weight holds"):
        session.reply("what is your name")
    assert len(session.history) == 2  # (the failed exchange is not kept)


def test_history_is_trimmed_to_the_context_keeping_the_system_message(chat_model):
    from llmkit.data.templates import drop_oldest_exchanges, encode_chat_prompt
    from llmkit.inference.engine import prompt_keep

    session = _session(chat_model, max_new_tokens=32, system="Answer briefly.")
    for i in range(12):
        session.history += [{"role": "user", "content": f"question number {i} about a long day in the park"},
                            {"role": "assistant", "content": f"answer number {i} about the same long day"}]
    conversation = [{"role": "system", "content": "Answer briefly."}, *session.history, {"role": "user", "content": "and now?"}]
    ids = session.prompt_ids("and now?")
    limit = session.model.config.context_length
    assert len(ids) + 32 - 1 <= limit  # the last new token is never fed
    kept = session.history
    assert 0 < len(kept) < 24 and kept[-1]["content"] == "answer number 11 about the same long day"
    # Exactly what `llmkit generate` keeps and renders for the same conversation, by the same budget.
    messages = [{"role": "system", "content": "Answer briefly."}, *kept, {"role": "user", "content": "and now?"}]
    assert ids == encode_chat_prompt(messages, session.tokenizer)
    assert drop_oldest_exchanges(conversation, session.tokenizer, prompt_keep(limit, 32))[0] == messages
    for new in (1, 32, limit // 2 - 1, limit // 2, limit // 2 + 1, limit):
        session.params.max_new_tokens = new
        assert session.prompt_budget() == prompt_keep(limit, new)


def test_a_system_message_longer_than_the_context_allows_is_refused_at_the_start(chat_model):
    from llmkit.errors import UserError

    with pytest.raises(UserError, match="--system takes .* tokens"):
        _session(chat_model, max_new_tokens=4, system="be very brief and kind " * 40)


def test_chat_command_in_the_terminal(chat_model, cli, monkeypatch):
    from typer.testing import CliRunner

    from llmkit.cli import app
    from llmkit.generate import chat

    piped = CliRunner().invoke(app, ["chat", str(chat_model), "--temperature", "0"],
                                               input="hello\n\n\nwho is there\n")
    assert piped.exit_code == 0, piped.output  # questions piped in: the replies alone, one a line (no prompts)
    assert piped.stdout == "Two dogs play in the snow.\n" * 2
    # a byte-order mark is no part of the first question; `/word text` is a command, refused (it went to the
    # model as a message), and the error says where the conversation before it is
    out = chat_model.parent / "bom-talk.jsonl"
    out.unlink(missing_ok=True)
    refused = CliRunner().invoke(app, ["chat", str(chat_model), "--temperature", "0", "-o", str(out)],
                                 input="\ufeffhello\n/system Be nice\n")
    said = " ".join(refused.stderr.split())
    assert refused.exit_code == 1 and "line 2 of the standard input: unknown command /system Be nice" in said, said
    assert f"the 1 conversation(s) before it are in {out}" in said, said
    assert json.loads(out.read_text().splitlines()[0])["messages"][0] == {"role": "user", "content": "hello"}
    assert "chatting with" in piped.stderr and "Ctrl-D" not in piped.stderr  # (piped: no commands to type)
    monkeypatch.setattr(chat, "_at_a_terminal", lambda: True)
    for compiled in ([], ["--compile"]):  # the compiled decode step replies alike
        result = CliRunner().invoke(app, ["chat", str(chat_model), "--temperature", "0", "--device", "cpu", *compiled],
                                    input="hello\n/reset\nwho is there\n/exit\n")
        assert result.exit_code == 0, result.output
        assert result.output.count("bot> Two dogs play in the snow.") == 2 and "Ctrl-D or Ctrl-C to leave" in result.output
    # NaN weights: typed, the error goes on a line of its own after "bot> "; piped, no empty reply is written
    import shutil

    from safetensors.torch import load_file, save_file

    from conftest import resign

    damaged = chat_model.parent / f"{chat_model.name}-nan"
    shutil.copytree(chat_model, damaged, dirs_exist_ok=True)
    weights = load_file(str(damaged / "model.safetensors"))
    weights["final_norm.weight"][:] = float("nan")
    save_file(weights, str(damaged / "model.safetensors"), metadata={"format": "pt"})
    resign(damaged)
    typed = CliRunner().invoke(app, ["chat", str(damaged)], input="hello\n")
    assert typed.exit_code == 1 and "bot> \n" in typed.stdout, typed.output
    assert typed.stderr.strip().endswith("its weight final_norm.weight holds NaN or inf; use another checkpoint")
    monkeypatch.setattr(chat, "_at_a_terminal", lambda: False)
    piped = CliRunner().invoke(app, ["chat", str(damaged)], input="hello\n")
    assert piped.exit_code == 1 and piped.stdout == "", piped.output
    # UTF-16 piped in (Windows' "Unicode" text) is named as such, with or without its mark (it was "an undecodable byte")
    import subprocess
    import sys

    for encoding, named in (("utf-16", "UTF-16"), ("utf-16-le", "UTF-16LE")):
        done = subprocess.run([sys.executable, "-m", "llmkit", "chat", str(chat_model)], input="hello there\n".encode(encoding),
                              capture_output=True, timeout=120)
        assert done.returncode == 1 and done.stderr.decode().strip().endswith(
            f"error: the standard input is {named} text; convert it to UTF-8 (iconv -f {named} -t UTF-8)"), done.stderr


def test_ctrl_c_stops_a_reply_or_leaves_at_the_prompt_and_the_transcript_is_said(chat_model, tmp_path, monkeypatch):
    """Ctrl-C ended the whole session with "nothing was written", though the transcript held every
    finished exchange: in a reply it stops that reply (left out of the conversation), at the prompt
    it leaves as Ctrl-D does; a SIGTERM ends the command and names what the transcript holds."""
    import io
    import json

    from typer.testing import CliRunner

    from llmkit.cli import app
    from llmkit.errors import Terminated
    from llmkit.generate.chat import ChatSession

    class CtrlCAfterTheLines(io.RawIOBase):  # a terminal whose user typed these lines, then pressed Ctrl-C
        def __init__(self, data: bytes):
            self.data = data

        def readable(self):
            return True

        def readinto(self, buffer):
            if not self.data:
                raise KeyboardInterrupt
            n = min(len(buffer), len(self.data))
            buffer[:n], self.data = self.data[:n], self.data[n:]
            return n

    real_reply = ChatSession.reply

    def reply(self, text, on_text=None, on_start=None):
        if text == "stop":
            raise KeyboardInterrupt
        if text == "end":
            raise Terminated
        return real_reply(self, text, on_text, on_start)

    monkeypatch.setattr(ChatSession, "reply", reply)
    import typer.testing

    made = typer.testing.make_input_stream  # (typer's runner takes text or bytes only: a stream as it is)
    monkeypatch.setattr(typer.testing, "make_input_stream", lambda given, charset: given if hasattr(given, "read") else made(given, charset))
    out = tmp_path / "t.jsonl"
    args = ["chat", str(chat_model), "--temperature", "0", "-n", "4", "-o", str(out)]
    result = CliRunner().invoke(app, args, input=CtrlCAfterTheLines(b"hello\nstop\nwho is there\n"))
    assert result.exit_code == 0 and "(reply stopped" in result.output and "wrote 1 conversation(s)" in result.output, result.output
    assert [m["content"] for m in json.loads(out.read_text())["messages"]][::2] == ["hello", "who is there"]
    result = CliRunner().invoke(app, [*args, "--force"], input="hello\nend\n")
    assert result.exit_code == 143, result.output
    assert f"terminated; the 1 conversation(s) before it are in {out}" in " ".join(result.output.split()), result.output
    assert [m["content"] for m in json.loads(out.read_text())["messages"]][::2] == ["hello"]
    # --force replaces a transcript chat wrote (marked), never a fine-tuning set of the same records (it did)
    assert json.loads(out.read_text())["llmkit"] == "chat"
    data = tmp_path / "train.jsonl"
    data.write_text(json.dumps({"messages": [{"role": "user", "content": "hi"}, {"role": "assistant", "content": "yo"}]}) + "\n")
    before = data.read_text()
    refused = CliRunner().invoke(app, [*args[:-1], str(data), "--force"], input="hello\n/exit\n")
    assert refused.exit_code == 1 and "is not a transcript chat wrote" in refused.output and data.read_text() == before


def test_a_line_that_is_not_unicode_is_refused_and_the_chat_goes_on_at_a_terminal(chat_model, tmp_path, monkeypatch):
    """Typed, the line is refused and the user types it again; piped (a script's questions), the
    session ends with exit 1 and the line's number, what was said before it saved: skipped, it
    paired every later reply with the wrong question, and the command exited 0."""
    import json

    from typer.testing import CliRunner

    from llmkit.cli import app
    from llmkit.generate import chat

    args = ["chat", str(chat_model), "--temperature", "0", "-n", "4"]
    piped = CliRunner().invoke(app, [*args, "-o", str(tmp_path / "t.jsonl")], input=b"hello\nab\xffcd\nwho is there\n")
    assert piped.exit_code == 1 and piped.stdout.count("\n") == 1, piped.output
    assert ("error: line 2 of the standard input is not valid Unicode text (an undecodable byte, "
            "\\xff); convert the input to UTF-8") in piped.stderr
    assert [m["content"] for m in json.loads((tmp_path / "t.jsonl").read_text())["messages"]][::2] == ["hello"]
    monkeypatch.setattr(chat, "_at_a_terminal", lambda: True)
    result = CliRunner().invoke(app, args, input=b"ab\xffcd\nhello\n/exit\n")
    assert result.exit_code == 0, result.output
    assert "error: that line is not valid Unicode text (an undecodable byte, \\xff)" in result.stderr
    assert result.stdout.count("bot> ") == 1


def test_commands_unknown_ones_and_a_message_that_starts_with_a_slash(chat_model, tmp_path, monkeypatch):
    """A line that is one /word and no command is refused (a mistyped /rest went to the model as a
    message): typed, the chat goes on; piped, the session ends, as for a line that is not UTF-8.
    `//` sends a line that starts with a slash."""
    import json

    from typer.testing import CliRunner

    from llmkit.cli import app
    from llmkit.generate import chat

    args = ["chat", str(chat_model), "--temperature", "0", "-n", "4"]
    out = tmp_path / "t.jsonl"
    piped = CliRunner().invoke(app, [*args, "-o", str(out)], input="//usr/bin is where\n/help\n/usr\nwho is there\n")
    assert piped.exit_code == 1 and piped.stdout.count("\n") == 1, piped.output
    assert "error: line 3 of the standard input: unknown command /usr" in piped.stderr
    assert "/help: show the commands; a line starting // is sent with one /\n" in piped.stderr  # one line, unwrapped
    assert [m["content"] for m in json.loads(out.read_text())["messages"]][::2] == ["/usr/bin is where"]
    monkeypatch.setattr(chat, "_at_a_terminal", lambda: True)
    typed = CliRunner().invoke(app, args, input="/rest\nhello\n")
    assert typed.exit_code == 0 and typed.stdout.count("bot> ") == 1, typed.output
    assert "unknown command /rest: the commands are /exit, /quit, /reset, /help" in " ".join(typed.stderr.split())


def test_what_is_shown_is_what_is_recorded_and_a_terminal_gets_no_control_characters(chat_model, tmp_path, monkeypatch):
    """The reply printed is the one recorded less the whitespace around it (which the transcript keeps,
    as the model saw its reply in the next turn's prompt; a piped reply printed it); at a
    terminal the model's control characters are left out, as generate leaves them (ESC Z asks a
    terminal to answer); every special token ends a reply (<|bos|> was printed, recorded and fed
    back as text); the prompt is fitted and its note printed before `bot> `, not inside that line."""
    import json
    from types import SimpleNamespace

    from typer.testing import CliRunner

    from llmkit import console
    from llmkit.cli import app
    from llmkit.generate import chat
    from llmkit.inference.engine import Generator

    stops = []

    def complete(self, prompts, params, *, on_text=None, extra_stop_ids=(), **_):
        stops.append(set(extra_stop_ids) | (set(self.tokenizer.end_ids) if params.stop_at_eos else set()))
        pieces = ["\n ", " Two\x1bZ", " dogs\x07 ", "\n", ""]
        for piece in pieces:
            on_text(0, piece)
        return [SimpleNamespace(text="".join(pieces), finish_reason="eos")]

    monkeypatch.setattr(Generator, "complete", complete)
    out = tmp_path / "t.jsonl"
    args = ["chat", str(chat_model), "-o", str(out), "--force"]
    piped = CliRunner().invoke(app, args, input="hello\n")
    assert piped.exit_code == 0 and piped.stdout == "Two\x1bZ dogs\x07\n", piped.output
    assert json.loads(out.read_text())["messages"][1]["content"] == "\n  Two\x1bZ dogs\x07 \n"
    tokenizer = __import__("llmkit.model.io", fromlist=["x"]).load_checkpoint(chat_model).tokenizer
    assert stops[0] == set(tokenizer.special_ids.values()) and tokenizer.special_ids["<|bos|>"] in stops[0]
    monkeypatch.setattr(chat, "_at_a_terminal", lambda: True)
    monkeypatch.setattr(console.out, "_force_terminal", True)
    shown = CliRunner().invoke(app, [*args, "-n", "100000"], input="hello\n")
    assert shown.exit_code == 0, shown.output
    assert "bot> TwoZ dogs\n" in shown.stdout and "\x1b" not in shown.stdout and "\x07" not in shown.stdout
    assert shown.output.index("replies stop at what is left") < shown.output.index("bot> ")


def test_the_next_turn_is_prompted_with_the_reply_as_the_model_wrote_it(chat_model, monkeypatch, tmp_path):
    """The reply shown is stripped; the history the next turn's prompt is made of keeps it as written
    ("ok\\n" went on as "ok": ids the fine-tune never saw after its own reply), and so does the
    transcript (stripped, it replayed another conversation than the model's)."""
    from types import SimpleNamespace

    from llmkit.inference.engine import Generator

    monkeypatch.setattr(Generator, "complete", lambda self, prompts, params, **_: [SimpleNamespace(text=" ok\n", finish_reason="eos")])
    session = _session(chat_model)
    assert session.reply("hello") == "ok"
    assert session.history == [{"role": "user", "content": "hello"}, {"role": "assistant", "content": " ok\n"}]
    from typer.testing import CliRunner

    from llmkit.cli import app

    shown = CliRunner().invoke(app, ["chat", str(chat_model), "-o", str(tmp_path / "t.jsonl")], input="hello\n")
    assert shown.exit_code == 0, shown.output
    saved = json.loads((tmp_path / "t.jsonl").read_text())["messages"]
    assert saved[-1] == {"role": "assistant", "content": " ok\n"}


def test_the_stream_without_the_whitespace_around_it_is_the_stored_reply():
    from llmkit.generate.chat import _Stripped

    for pieces in ([" ", " a", " ", "b ", "\n", ""], ["a b"], ["  ", "\t"], ["\n\u3000x", "\u3000"], [" a", "", " \n\n", "b"]):
        written = []
        stream = _Stripped(written.append)
        for piece in pieces:
            stream(piece)
        assert "".join(written) == "".join(pieces).strip(), pieces


def test_chat_refuses_a_classifier(base, tmp_path, cli):
    rows = [{"text": t, "label": i % 2} for i, t in enumerate(["good", "bad", "fine film", "awful mess"] * 4)]
    data = write_jsonl(tmp_path / "cls.jsonl", rows)
    run = tmp_path / "cls"
    assert cli("finetune", base["checkpoint"], "--data", data, "-o", run, "--task", "classify", "--max-steps", "1",
               "--batch-size", "4", "--micro-batch", "4").exit_code == 0
    result = cli("chat", run)
    assert result.exit_code != 0 and "is a classifier" in result.output


def test_a_text_template_checkpoint_takes_one_input_per_turn(base):
    from llmkit.errors import UserError
    from llmkit.data.templates import resolve_template
    from llmkit.model.records import TaskRecord
    from llmkit.generate.chat import ChatSession
    from llmkit.inference.engine import GenerationParams
    from llmkit.model.io import load_checkpoint

    loaded = load_checkpoint(base["checkpoint"])
    task = TaskRecord(task="sft", template=resolve_template("translate"))
    session = ChatSession(loaded.model, loaded.tokenizer, task, GenerationParams(max_new_tokens=4))
    tok = loaded.tokenizer
    assert session.prompt_ids("Zwei Hunde.") == [tok.bos_id] + tok.encode("Translate:\nZwei Hunde.\nTranslation:")
    session.reply("Zwei Hunde.")
    assert session.history == []  # each line stands alone
    with pytest.raises(UserError, match="no system message"):
        ChatSession(loaded.model, loaded.tokenizer, task, GenerationParams(), system="Be brief.")


def test_a_long_reply_budget_keeps_the_message_and_its_template(base, capsys):
    """--max-new-tokens at or past the context used to leave the prompt one token ('\\n' or ':'):
    what was typed was thrown away. The prompt now keeps at least half the context, its start token
    and wording, a long message loses only its end, and a note says so."""
    from llmkit.data.templates import encode_chat_prompt, resolve_template
    from llmkit.generate.chat import ChatSession
    from llmkit.inference.engine import GenerationParams
    from llmkit.model.io import load_checkpoint
    from llmkit.model.records import TaskRecord

    loaded = load_checkpoint(base["checkpoint"])
    tok, limit = loaded.tokenizer, loaded.model.config.context_length
    task = TaskRecord(task="sft", template=resolve_template("translate"))
    session = ChatSession(loaded.model, tok, task, GenerationParams(max_new_tokens=4 * limit))
    assert session.prompt_ids("Zwei Hunde.") == [tok.bos_id] + tok.encode("Translate:\nZwei Hunde.\nTranslation:")
    long = session.prompt_ids("Zwei Hunde spielen im Schnee. " * 40)
    assert len(long) <= limit - limit // 2 and long[0] == tok.bos_id
    assert tok.decode(long[1:]).startswith("Translate:\nZwei Hunde") and tok.decode(long).endswith("\nTranslation:")
    said = " ".join(capsys.readouterr().err.split())
    assert "loses its end" in said and f"(--max-new-tokens {4 * limit})" in said and "a lower --max-new-tokens" in said

    chat = ChatSession(loaded.model, tok, None, GenerationParams(max_new_tokens=4 * limit, temperature=0.0))
    chat.history = [{"role": "user", "content": "my name is Bob"}, {"role": "assistant", "content": "hi Bob"}]
    ids = chat.prompt_ids("what is my name?")  # the exchange fits beside half a context: it is kept
    assert ids == encode_chat_prompt([*chat.history, {"role": "user", "content": "what is my name?"}], tok)
    chat.reply("what is my name?")
    assert len(chat.history) == 4
    assert "replies stop at what is left" in capsys.readouterr().err


def test_the_transcript_keeps_conversations_as_the_model_saw_them(chat_model, base, cli, tmp_path):
    """-o FILE.jsonl: a chat checkpoint's turns are one conversation until /reset; a
    text-template checkpoint saw each line alone, so each exchange is its own record (they were
    strung into one conversation that never happened)."""
    import json

    from typer.testing import CliRunner

    from llmkit.cli import app

    def transcript(checkpoint, name, lines):
        result = CliRunner().invoke(app, ["chat", str(checkpoint), "--temperature", "0", "-n", "4", "-o", str(tmp_path / name)],
                                    input=lines)
        assert result.exit_code == 0, result.output
        return [[m["role"] for m in json.loads(line)["messages"]] for line in (tmp_path / name).read_text().splitlines()]

    assert transcript(chat_model, "chat.jsonl", "hello\nwho is there\n/reset\nbye\n") == [
        ["user", "assistant", "user", "assistant"], ["user", "assistant"]]
    data = write_jsonl(tmp_path / "sft.jsonl", [{"prompt": "Say yes.", "response": "yes"}] * 8)
    assert cli("finetune", base["checkpoint"], "--data", data, "-o", tmp_path / "plain", "--template", "plain",
               "--max-steps", "1", "--batch-size", "8", "--eval-every", "0", "--val-fraction", "0").exit_code == 0
    assert transcript(tmp_path / "plain", "plain.jsonl", "Ein Hund.\nZwei Katzen.\n") == [["user", "assistant"]] * 2
    # a Windows line end is not part of the message (generate's prompt files drop it too); in a process of its own,
    # since the test runner's input reads "\r\n" as a newline, as a terminal's does not
    import subprocess
    import sys

    crlf = subprocess.run([sys.executable, "-m", "llmkit", "chat", str(chat_model), "--greedy", "-n", "2", "-o",
                           str(tmp_path / "crlf.jsonl")], input=b"hello\r\n", capture_output=True, timeout=300)
    assert crlf.returncode == 0, crlf.stderr.decode()[-2000:]
    assert json.loads((tmp_path / "crlf.jsonl").read_text())["messages"][0]["content"] == "hello"
    # no exchange: nothing written, no folder made for it, an old transcript left as it was (with a note)
    quiet = CliRunner().invoke(app, ["chat", str(chat_model), "-o", str(tmp_path / "new" / "deeper" / "t.jsonl")], input="")
    assert quiet.exit_code == 0 and not (tmp_path / "new").exists()
    kept = CliRunner().invoke(app, ["chat", str(chat_model), "--force", "-o", str(tmp_path / "crlf.jsonl")], input="")
    assert kept.exit_code == 0 and "no exchange to save" in kept.output and "hello" in (tmp_path / "crlf.jsonl").read_text()


def test_a_reply_is_capped_only_where_the_engine_would_need_a_window(shared_data, tmp_path, capsys):
    """A request needs prompt + n - 1 positions (the last token is never fed): a 32-token prompt
    beside -n 33 fits a 64-token context whole; it was cut to 32 with a note. One more is capped."""
    from llmkit.generate.chat import ChatSession
    from llmkit.inference.engine import GenerationParams
    from llmkit.model.io import load_checkpoint
    from test_generate import make_checkpoint

    text = (shared_data / "tinyshakespeare.txt").read_text(encoding="utf-8")[:5000]
    loaded = load_checkpoint(make_checkpoint(tmp_path / "ck", text))  # context 64
    for new_tokens, expected in ((33, 33), (34, 33)):
        session = ChatSession(loaded.model, loaded.tokenizer, None, GenerationParams(max_new_tokens=new_tokens))
        session.prompt_ids = lambda _text: list(range(10, 42))  # 32 tokens, what the prompt's budget allows
        asked = []
        session.generator.complete = lambda prompts, params, **_: asked.append(params.max_new_tokens) or [
            type("Done", (), {"text": "", "finish_reason": "length"})()]
        session.reply("hi")
        assert asked == [expected]
        assert ("replies stop at what is left" in capsys.readouterr().err) == (new_tokens != expected)


def test_one_session_at_a_time_writes_a_transcript_through_a_temporary_file_of_its_own(shared_data, tmp_path, cli):
    """Like generate's -o: a second session on one transcript is refused at once (the two rewrote
    the same `.NAME.tmp`), and another writer's temporary file is left alone."""
    from typer.testing import CliRunner

    from llmkit.cli import app
    from llmkit.outputs import output_lock
    from test_generate import make_checkpoint

    checkpoint = make_checkpoint(tmp_path / "ck", (shared_data / "tinyshakespeare.txt").read_text(encoding="utf-8")[:5000])
    out = tmp_path / "talk.jsonl"
    args = ["chat", str(checkpoint), "--greedy", "-n", "2", "-o", str(out)]
    with output_lock(out):
        refused = CliRunner().invoke(app, args, input="hello\n")
    assert refused.exit_code != 0 and "another llmkit run is writing" in refused.output and not out.exists(), refused.output
    (tmp_path / ".talk.jsonl.tmp").write_text("another session's\n")
    result = CliRunner().invoke(app, args, input="hello\n")
    assert result.exit_code == 0, result.output
    assert [m["role"] for m in __import__("json").loads(out.read_text())["messages"]] == ["user", "assistant"]
    assert (tmp_path / ".talk.jsonl.tmp").read_text() == "another session's\n"


def test_a_reply_cut_inside_a_character_leaves_no_replacement_character(chat_model, monkeypatch):
    """A byte-level reply stopped by --max-new-tokens may end inside a multi-byte character, which
    decodes to U+FFFD: the reply and the history (the transcript) leave it out; a reply that ends
    by itself keeps what it decoded to."""
    import dataclasses

    session = _session(chat_model)
    real = session.generator.complete

    def ending(pieces, reason, cut_inside=False):
        def complete(*args, on_text=None, **kwargs):  # as Generator.complete streams and returns a reply
            written = "".join(pieces).removesuffix("\ufffd") if cut_inside else "".join(pieces)
            on_text(0, written)
            return [dataclasses.replace(real(*args, **kwargs)[0], text=written, finish_reason=reason)]
        return complete

    shown = []
    monkeypatch.setattr(session.generator, "complete", ending(["Two dogs ", "\u5927", "\ufffd"], "length", cut_inside=True))
    assert session.reply("hello", on_text=shown.append) == "Two dogs \u5927" == "".join(shown)
    assert session.history[-1]["content"] == "Two dogs \u5927"
    shown.clear()  # a U+FFFD inside the reply, or at its end where it stopped by itself, is the model's text
    monkeypatch.setattr(session.generator, "complete", ending(["a \ufffd", "b \ufffd"], "eos"))
    assert session.reply("hello", on_text=shown.append) == "a \ufffdb \ufffd" == "".join(shown)
    # ... and where the length stopped it after a U+FFFD the model wrote (a lone continuation byte): shown as saved
    shown.clear()
    monkeypatch.setattr(session.generator, "complete", ending(["\u5bb6\u559c", "\ufffd"], "length"))
    assert session.reply("hello", on_text=shown.append) == "\u5bb6\u559c\ufffd" == "".join(shown)
    assert session.history[-1]["content"] == "\u5bb6\u559c\ufffd"


def test_chat_stops_a_reply_at_a_stop_string(chat_model):
    """--stop, generate's option (declared once, in the shared Sampling group): the reply ends before it, and the
    conversation goes on from the reply as cut."""
    from typer.testing import CliRunner

    from llmkit.cli import app

    piped = CliRunner().invoke(app, ["chat", str(chat_model), "--temperature", "0", "--stop", " play"],
                               input="hello\nwho is there\n")
    assert piped.exit_code == 0, piped.output
    assert piped.stdout == "Two dogs\n" * 2
    refused = CliRunner().invoke(app, ["chat", str(chat_model), "--stop", ""], input="hello\n")
    assert refused.exit_code == 2 and "empty stop string" in refused.output
