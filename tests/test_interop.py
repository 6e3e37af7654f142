"""Hugging Face interop: `llmkit export --format hf` and `llmkit import`, checked against
transformers itself (logits within 1e-4 both ways, tokenizer ids equal). No network, no hub:
every model here is built and saved locally."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import numpy as np
import pytest
import torch

from llmkit import artifacts
from llmkit.model.gpt import GPT, ModelConfig
from llmkit.data.tokenizer import load_tokenizer
from llmkit.model.io import TOKENIZER_DIR, load_checkpoint, save_weights

pytestmark = pytest.mark.filterwarnings("ignore::UserWarning")

TEXT = (
    "First Citizen: Before we proceed any further, hear me speak.\n"
    "All: Speak, speak.\nFirst Citizen: You are all resolved rather to die than to famish?\n"
    "Café naïve — 東京 ünïcödé 🙂 and numbers 12345.\n"
)
SAMPLES = ["Hello there, citizens!", "Speak, speak. 東京 🙂", "  leading spaces\nand lines", "café 12345678"]
TOL = 1e-4


@pytest.fixture(autouse=True, scope="module")
def _one_thread():
    previous = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(previous)


@pytest.fixture(scope="module")
def tokenizer_dir(tmp_path_factory) -> Path:
    """A tiny BPE of llmkit's own shape (its pre-tokenizer, special tokens and byte table), as a
    tokenizer folder (contracts 3/4)."""
    from tokenizers import pre_tokenizers, trainers

    from llmkit.data.tokenizer import DEFAULT_SPECIAL_TOKENS, compute_token_bytes, new_byte_level_bpe

    tok = new_byte_level_bpe()
    trainer = trainers.BpeTrainer(
        vocab_size=320,
        special_tokens=list(DEFAULT_SPECIAL_TOKENS),
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
        show_progress=False,
    )
    tok.train_from_iterator(TEXT.splitlines() * 20, trainer)
    folder = tmp_path_factory.mktemp("tokenizer")
    tok.save(str(folder / "tokenizer.json"))
    np.save(folder / "token_bytes.npy", compute_token_bytes(tok), allow_pickle=False)
    return folder


def _perturb(model: torch.nn.Module, seed: int) -> None:
    """Non-trivial norm weights and biases, so a swapped or untransposed tensor shows in the logits."""
    gen = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for p in model.parameters():
            p.add_(torch.randn(p.shape, generator=gen) * 0.05)


def make_checkpoint(root: Path, name: str, tokenizer_dir: Path, seed: int = 0, document_start: str | None = None,
                    **fields) -> Path:
    from tokenizers import Tokenizer

    vocab = Tokenizer.from_file(str(tokenizer_dir / "tokenizer.json")).get_vocab_size()
    config = ModelConfig(vocab_size=vocab, context_length=64, n_layer=2, n_head=4, n_embd=64, **fields)
    torch.manual_seed(seed)
    model = GPT(config)
    _perturb(model, seed)
    out = root / name
    with artifacts.create(out, "checkpoint") as build:
        save_weights(model, build.dir)
        (build.dir / TOKENIZER_DIR).mkdir()
        for file in ("tokenizer.json", "token_bytes.npy"):
            (build.dir / TOKENIZER_DIR / file).write_bytes((tokenizer_dir / file).read_bytes())
        build.config = {"model": config.to_dict(), **({"document_start": document_start} if document_start else {})}
        build.seed = seed
    return out


GPT2_STYLE = dict(norm="layernorm", pos="learned", activation="gelu")
LLAMA_STYLE = dict(norm="rmsnorm", pos="rope", activation="swiglu")
EXPORT_CASES = {
    "gpt2-tied-bias": dict(GPT2_STYLE, bias=True, tie_embeddings=True),
    "gpt2-untied-gqa-nobias": dict(GPT2_STYLE, bias=False, tie_embeddings=False, n_kv_head=2),
    "llama-tied-gqa": dict(LLAMA_STYLE, bias=False, tie_embeddings=True, n_kv_head=2, rope_theta=500000.0),
    "llama-untied-bias": dict(LLAMA_STYLE, bias=True, tie_embeddings=False, norm_eps=1e-6),
}


def _tokens(vocab: int, seed: int = 0, shape=(2, 40)) -> torch.Tensor:
    return torch.randint(0, vocab, shape, generator=torch.Generator().manual_seed(seed))


@pytest.mark.parametrize("case", list(EXPORT_CASES))
def test_export_loads_in_transformers_with_equal_logits_and_tokens(cli, tmp_path, tokenizer_dir, case):
    from transformers import AutoModelForCausalLM, AutoTokenizer

    ckpt = make_checkpoint(tmp_path, "ckpt", tokenizer_dir, **EXPORT_CASES[case])
    out = tmp_path / "hf"
    result = cli("export", ckpt, "--format", "hf", "-o", out)
    assert result.exit_code == 0, result.output
    assert (out / "model.safetensors").is_file() and not list(out.glob("*.bin"))
    assert (out / "generation_config.json").is_file()

    hf_model, info = AutoModelForCausalLM.from_pretrained(out, local_files_only=True, output_loading_info=True)
    hf_model.eval()
    assert not info["missing_keys"] and not info["unexpected_keys"], info
    expected_class = "GPT2LMHeadModel" if case.startswith("gpt2") else "LlamaForCausalLM"
    assert type(hf_model).__name__ == expected_class

    loaded = load_checkpoint(ckpt)
    idx = _tokens(loaded.config.vocab_size)
    with torch.no_grad():
        ours = loaded.model(idx)[0]
        theirs = hf_model(idx).logits
    assert ours.shape == theirs.shape
    assert torch.allclose(ours, theirs, atol=TOL, rtol=0), (ours - theirs).abs().max()

    hf_tok = AutoTokenizer.from_pretrained(out, local_files_only=True)
    tok = loaded.tokenizer
    assert (hf_tok.bos_token_id, hf_tok.eos_token_id, hf_tok.pad_token_id) == (tok.bos_id, tok.eos_id, tok.pad_id)
    for text in SAMPLES:
        ids = tok.encode(text)
        assert hf_tok(text, add_special_tokens=False)["input_ids"] == ids
        assert hf_tok.decode(ids) == tok.decode(ids)
    # transformers tokenizers parse special-token text (chat templates rely on it); llmkit's
    # loader keeps typed specials as text and inserts them by id. The same ids either way:
    assert hf_tok("<|user|>hi", add_special_tokens=False)["input_ids"] == [tok.special_ids["<|user|>"]] + tok.encode("hi")
    # A base model was never trained on a prompt format: no chat template. Generation ends where llmkit's
    # ends, at eos and at every other special token (transformers went on past a <|bos|> llmkit stopped at)
    assert hf_tok.chat_template is None
    assert json.loads((out / "generation_config.json").read_text())["eos_token_id"] == _every_stop(tok)
    # a batch pads on the left, as llmkit's does (right-padded rows of generate() continued after their padding)
    assert hf_tok.padding_side == "left"
    # re-saved without llmkit's record (save_pretrained into another folder), it comes back the same: the listed
    # special tokens are no ends of a turn (<|user|> was one, and --ignore-eos wrote it out as text)
    (out / "llmkit_model_config.json").unlink()
    assert cli("import", out, "-o", tmp_path / "back").exit_code == 0
    assert load_checkpoint(tmp_path / "back").tokenizer.end_ids == [tok.eos_id]


def _every_stop(tok) -> list[int]:
    """generation_config.json's eos_token_id of an export: the end of text first, then every other special token."""
    return [tok.eos_id] + sorted(set(tok.special_ids.values()) - {tok.eos_id})


def _with_task(ckpt: Path, task: dict, out: Path, **model: str) -> Path:
    """A copy of a checkpoint artifact with a fine-tuning task.json (as `llmkit finetune` writes); `model`:
    model_config.json's fields changed (a kind of model no weights here are, for what is read before them)."""
    with artifacts.create(out, "checkpoint") as build:
        for name in artifacts.load(ckpt).manifest.files:
            (build.dir / name).parent.mkdir(parents=True, exist_ok=True)
            (build.dir / name).write_bytes((ckpt / name).read_bytes())
        (build.dir / "task.json").write_text(json.dumps(task))
        if model:
            config = json.loads((build.dir / "model_config.json").read_text())
            (build.dir / "model_config.json").write_text(json.dumps({**config, **model}))
    return out


def test_finetuned_prompt_formats_become_chat_templates(cli, tmp_path, tokenizer_dir):
    """task.json's chat or text template as a Jinja chat template: apply_chat_template gives the
    ids llmkit's fine-tuning trains on and prompts with; classifiers are refused."""
    from transformers import AutoTokenizer

    from llmkit.data.templates import (
        encode_chat_example, encode_chat_prompt, encode_text_example, encode_text_prompt, resolve_template,
    )

    base = make_checkpoint(tmp_path, "base", tokenizer_dir, **EXPORT_CASES["llama-tied-gqa"])
    tok = load_checkpoint(base).tokenizer

    chat_ckpt = _with_task(base, {"task": "sft", "template": resolve_template("chat")}, tmp_path / "chat")
    assert cli("export", chat_ckpt, "-o", tmp_path / "chat-hf").exit_code == 0
    hf_tok = AutoTokenizer.from_pretrained(tmp_path / "chat-hf", local_files_only=True)
    history = [{"role": "system", "content": "Be brief."}, {"role": "user", "content": "Speak, speak!"}]
    render = lambda messages, **kw: list(hf_tok.apply_chat_template(messages, tokenize=True, return_dict=False, **kw))  # noqa: E731
    assert render(history, add_generation_prompt=True) == encode_chat_prompt(history, tok)
    finished = history + [{"role": "assistant", "content": "First Citizen."}]
    assert render(finished) == encode_chat_example(finished, tok).ids
    # what training learns, as transformers' assistant mask (TRL's assistant_only_loss) reads it: it was all zeros
    for talk in (finished, finished + [{"role": "user", "content": ""}, {"role": "assistant", "content": " Aye. "}],
                 history + [{"role": "assistant", "content": ""}, {"role": "assistant", "content": "Well."}]):
        masked = hf_tok.apply_chat_template(talk, tokenize=True, return_dict=True, return_assistant_tokens_mask=True)
        example = encode_chat_example(talk, tok)
        assert list(masked["input_ids"]) == example.ids and list(masked["assistant_masks"]) == [int(x) for x in example.learn]
    stops = json.loads((tmp_path / "chat-hf" / "generation_config.json").read_text())["eos_token_id"]
    assert stops == _every_stop(tok) and {tok.special_ids[f"<|{r}|>"] for r in ("system", "user", "assistant")} <= set(stops)

    template = resolve_template("translate")
    text_ckpt = _with_task(base, {"task": "sft", "template": template, "prompt_template": template["prompt"]}, tmp_path / "tr")
    assert cli("export", text_ckpt, "-o", tmp_path / "tr-hf").exit_code == 0
    hf_tok = AutoTokenizer.from_pretrained(tmp_path / "tr-hf", local_files_only=True)
    record = {"source": "Café naïve, 東京.", "target": "Coffee."}
    user = [{"role": "user", "content": record["source"]}]
    assert render(user, add_generation_prompt=True) == encode_text_prompt(template, record["source"], tok)
    # A whole example renders as one string, so BPE may merge across the prompt/response seam
    # that llmkit's training keeps; on this example there is none to merge.
    example = render(user + [{"role": "assistant", "content": record["target"]}])
    assert example == encode_text_example(template, record, tok, "test").ids
    masked = hf_tok.apply_chat_template(user + [{"role": "assistant", "content": record["target"]}], tokenize=True,
                                        return_dict=True, return_assistant_tokens_mask=True)  # (all zeros before)
    assert list(masked["assistant_masks"]) == [int(x) for x in encode_text_example(template, record, tok, "test").learn]
    assert json.loads((tmp_path / "tr-hf" / "generation_config.json").read_text())["eos_token_id"] == _every_stop(tok)
    # two fields a side (Alpaca's instruction and input): no chat template can fill them, and the export says so
    alpaca = dict(template, name=None, prompt="### Instruction:\n{instruction}\n### Input:\n{input}\n### Response:\n",
                  response="{output}", input_field=None, target_field="output")
    two = cli("export", _with_task(base, {"task": "sft", "template": alpaca}, tmp_path / "al"), "-o", tmp_path / "al-hf")
    assert two.exit_code == 0 and "the export has no chat template" in " ".join(two.output.split()), two.output
    assert "chat_template" not in json.loads((tmp_path / "al-hf" / "tokenizer_config.json").read_text())

    classifier = _with_task(base, {"task": "classify", "labels": ["neg", "pos"]}, tmp_path / "cls")
    line = _error(cli("export", classifier, "-o", tmp_path / "cls-hf"))
    assert "classification" in line and "export the checkpoint it was fine-tuned from" in line, line
    assert not (tmp_path / "cls-hf").exists()
    # an LSTM's or a masked LM's classifier: not sent to generate, nor to make a classifier of it (both refused)
    for model, said in (({"arch": "lstm"}, "nor does the LSTM it was fine-tuned from; use it with llmkit eval"),
                        ({"objective": "mlm"}, "nor does the masked LM it was fine-tuned from; use it with llmkit eval"),
                        # a style no transformers class computes: its base does not export either (it was sent there)
                        ({"norm": "rmsnorm", "pos": "learned", "activation": "gelu"},
                         "nor does the model (rmsnorm, learned, gelu) it was fine-tuned from; use it with llmkit eval")):
        other = _with_task(base, {"task": "classify", "labels": ["neg", "pos"]}, tmp_path / f"cls-{model}", **model)
        line = _error(cli("export", other, "-o", tmp_path / "other-hf"))
        assert "classification checkpoint" in line and said in line and "generate" not in line, line


@pytest.mark.parametrize("case", ["llama-tied-gqa", "gpt2-untied-gqa-nobias"])  # (the second comes back multi-head)
def test_a_finetune_keeps_its_prompt_format_through_export_and_import(cli, tmp_path, tokenizer_dir, case):
    from llmkit.data.templates import resolve_template

    base = make_checkpoint(tmp_path, "base", tokenizer_dir, **EXPORT_CASES[case])
    template = resolve_template("translate")
    tuned = _with_task(base, {"task": "sft", "template": template, "format_version": 1}, tmp_path / "tr")
    assert cli("export", tuned, "-o", tmp_path / "tr-hf").exit_code == 0
    assert cli("import", tmp_path / "tr-hf", "-o", tmp_path / "back").exit_code == 0
    back = load_checkpoint(tmp_path / "back")
    assert back.task is not None and back.task.template == template
    assert back.task.to_json() == load_checkpoint(tuned).task.to_json()
    # an import draws nothing: another --seed is the same artifact, and the manifest records no seed
    assert cli("import", tmp_path / "tr-hf", "--seed", "3", "-o", tmp_path / "reseeded").exit_code == 0
    imported = [artifacts.load(tmp_path / name) for name in ("back", "reseeded")]
    assert imported[0].fingerprint == imported[1].fingerprint and imported[0].manifest.seed is None
    # given a chat template in transformers and saved back into the folder: the export's record no
    # longer speaks for it, and the folder is read as any transformers folder
    from transformers import AutoTokenizer

    edited = tmp_path / "edited-hf"
    shutil.copytree(tmp_path / "tr-hf", edited)
    theirs = AutoTokenizer.from_pretrained(edited, local_files_only=True)
    theirs.chat_template = CHATML
    theirs.save_pretrained(edited)
    result = cli("import", edited, "-o", tmp_path / "edited")
    said = " ".join(result.output.split())
    assert result.exit_code == 0 and "tokenizer_config.json changed since llmkit exported" in said and "(task, end_of_turn)" in said, said
    again = load_checkpoint(tmp_path / "edited")
    assert again.task is None and again.tokenizer.own_chat_template == CHATML
    # the parts of the record those files do not bear on still hold: the document start, the model config
    assert artifacts.load(tmp_path / "edited").config["document_start"] == artifacts.load(tmp_path / "back").config["document_start"]
    assert again.config == back.config


def test_an_eos_list_names_an_end_of_turn_unless_it_is_llmkits_list_of_every_special_token(tmp_path):
    """llmkit's export lists every special token (its generation stops at each): no end of a turn. A foreign
    model's list is read as before, whatever its tokenizer's specials (one of <s> and </s> alone, listing a
    <|im_end|> that is not marked special, or a plain vocabulary token, lost it: a review)."""
    from tokenizers import AddedToken, Tokenizer, models

    from llmkit.interop.importer import _end_of_turn

    def folder(specials, plain, listed):
        tok = Tokenizer(models.WordLevel({w: i for i, w in enumerate(["a", "b", "Ċ"])}, unk_token="a"))
        tok.add_special_tokens([AddedToken(t, special=True) for t in specials])
        tok.add_tokens([AddedToken(t, special=False) for t in plain])
        src = tmp_path / f"f{len(list(tmp_path.iterdir()))}"
        src.mkdir()
        (src / "generation_config.json").write_text(json.dumps({"eos_token_id": [tok.token_to_id(t) for t in listed]}))
        return src, tok

    roles = {"bos": "<s>", "eos": "</s>", "pad": "</s>"}
    for specials, plain, listed, ends in ((["<s>", "</s>"], ["<|im_end|>"], ["</s>", "<|im_end|>"], ["<|im_end|>"]),
                                          (["<s>", "</s>"], [], ["</s>", "Ċ"], ["Ċ"]),
                                          (["<s>", "</s>", "<|im_start|>", "<|im_end|>"], [], ["</s>", "<|im_end|>"], ["<|im_end|>"]),
                                          # llmkit's own export: every special token, roles first
                                          (["<s>", "</s>", "<|user|>", "<|assistant|>"], [], ["</s>", "<s>", "<|user|>", "<|assistant|>"], []),
                                          # a foreign model whose one other special is its end of turn: kept (a review)
                                          (["<s>", "</s>", "<|im_end|>"], [], ["</s>", "<|im_end|>"], ["<|im_end|>"])):
        src, tok = folder(specials, plain, listed)
        assert _end_of_turn(src, tok, roles) == ends, (specials, plain, listed)


def test_a_chat_finetune_whose_template_was_edited_in_transformers_keeps_its_stops(cli, tmp_path, tokenizer_dir):
    """Its export records no end-of-turn tokens (the task's role tokens stop it) and lists them in
    generation_config.json; with the template edited, import dropped the task but still trusted the empty
    record: the checkpoint had no stops but eos, and its next export let transformers run past the turn."""
    from transformers import AutoTokenizer

    from llmkit.data.templates import resolve_template

    base = make_checkpoint(tmp_path, "base", tokenizer_dir, **EXPORT_CASES["llama-tied-gqa"])
    tuned = _with_task(base, {"task": "sft", "template": resolve_template("chat"), "format_version": 1}, tmp_path / "chat")
    assert cli("export", tuned, "-o", tmp_path / "chat-hf").exit_code == 0
    stops = json.loads((tmp_path / "chat-hf" / "generation_config.json").read_text())["eos_token_id"]
    assert isinstance(stops, list) and len(stops) > 1
    theirs = AutoTokenizer.from_pretrained(tmp_path / "chat-hf", local_files_only=True)
    theirs.chat_template = CHATML
    theirs.save_pretrained(tmp_path / "chat-hf")
    assert cli("import", tmp_path / "chat-hf", "-o", tmp_path / "back").exit_code == 0
    back = load_checkpoint(tmp_path / "back")
    # the role tokens stop it as every special token does (they start a turn: no end of one, which --ignore-eos
    # would let through as text); its next export lists them all again
    assert back.task is None and back.tokenizer.end_ids == [back.tokenizer.eos_id]
    assert cli("export", tmp_path / "back", "-o", tmp_path / "again-hf").exit_code == 0
    assert sorted(json.loads((tmp_path / "again-hf" / "generation_config.json").read_text())["eos_token_id"]) == sorted(stops)


def test_sentencepiece_style_tokenizers_have_no_marker_at_the_prompt_response_seam():
    """A Llama-style tokenizer prepends "▁" to every text it encodes; a template's response follows its
    prompt mid-text, so fine-tuning encodes it without that marker: the ids of the two written together."""
    import numpy as np

    from llmkit.data.templates import encode_text_example, resolve_template
    from llmkit.data.tokenizer import TextTokenizer

    hf, names = _llama_style_tokenizer()
    from llmkit.data.tokenizer import token_byte_lengths

    tok = TextTokenizer(hf, np.asarray(token_byte_lengths(hf)), roles={"bos": names["bos_token"], "eos": names["eos_token"],
                                                                        "pad": names["eos_token"]})
    template = {**resolve_template("plain"), "prompt": "Citizen: {prompt} All:", "response": " {response}"}
    record = {"prompt": "hear me speak", "response": "First Citizen speaks"}
    example = encode_text_example(template, record, tok, "test")
    text = "Citizen: hear me speak All: First Citizen speaks"

    def spelled(ids: list[int]) -> str:  # the pieces' text: merges may differ at the seam, the text may not
        return "".join(hf.id_to_token(i) for i in ids)

    assert example.ids[0] == tok.bos_id and example.ids[-1] == tok.eos_id
    assert spelled(example.ids[1:-1]) == spelled(tok.encode(text)) == "▁" + text.replace(" ", "▁")
    assert spelled(tok.encode(" First")) == "▁▁First" and spelled(tok.encode_continuation(" First")) == "▁First"
    gpt2_style = TextTokenizer(*(lambda t: (t, token_byte_lengths(t)))(_gpt2_style_tokenizer()[0]),
                               roles={"bos": "<|endoftext|>", "eos": "<|endoftext|>", "pad": "<|endoftext|>"})
    assert gpt2_style.encode_continuation(" First") == gpt2_style.encode(" First")  # byte-level BPE has no marker
    from tokenizers import pre_tokenizers

    prefixed, _ = _gpt2_style_tokenizer()  # ... unless it adds a prefix space ("Ġ") to every text
    prefixed.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=True)
    prefixed_tok = TextTokenizer(prefixed, token_byte_lengths(prefixed), roles={r: "<|endoftext|>" for r in ("bos", "eos", "pad")})
    assert prefixed_tok.encode_continuation("speak") == gpt2_style.encode("speak") != prefixed_tok.encode("speak")


@pytest.mark.parametrize("stripping", [False, True])
def test_templates_encode_as_transformers_renders_them_with_a_first_only_marker(stripping):
    """Current Llama and Mistral tokenizer.json files mark only the start of the whole string with
    "▁" (Metaspace, prepend_scheme "first"), and Phi-3's role tokens take the whitespace beside
    them (rstrip, lstrip). apply_chat_template renders the exported template into one string, so
    the text after a special token has no marker there and no stripped space: llmkit's chat and
    text templates encode the same ids, for training and for prompts."""
    from tokenizers import AddedToken, Tokenizer, decoders, models, pre_tokenizers, trainers
    from transformers import PreTrainedTokenizerFast

    from llmkit.data.templates import (
        encode_chat_example, encode_chat_prompt, encode_text_example, encode_text_prompt, resolve_template,
    )
    from llmkit.data.tokenizer import TextTokenizer, token_byte_lengths
    from llmkit.interop.hf_tokenizer import CHAT_TEMPLATE, chat_template_for

    hf = Tokenizer(models.BPE(byte_fallback=True, unk_token="<unk>", fuse_unk=True))
    hf.pre_tokenizer = pre_tokenizers.Metaspace(replacement="▁", prepend_scheme="first", split=False)
    hf.decoder = decoders.Sequence([decoders.Replace("▁", " "), decoders.ByteFallback(), decoders.Fuse(), decoders.Strip(" ", 1, 0)])
    hf.train_from_iterator(TEXT.splitlines() * 20, trainers.BpeTrainer(vocab_size=300, special_tokens=["<unk>", "<s>", "</s>"],
                                                                       show_progress=False))
    hf.add_special_tokens([AddedToken(f"<|{role}|>", special=True, rstrip=stripping, lstrip=stripping)
                           for role in ("system", "user", "assistant")])
    tok = TextTokenizer(hf, np.asarray(token_byte_lengths(hf)), roles={"bos": "<s>", "eos": "</s>", "pad": "</s>"})
    assert hf.id_to_token(tok.encode("speak")[0]).startswith("▁")
    assert not hf.id_to_token(tok.encode_after_special("speak")[0]).startswith("▁")

    def render(template: str, messages: list[dict], **kw) -> list[int]:
        hf_tok = PreTrainedTokenizerFast(tokenizer_object=hf, bos_token="<s>", eos_token="</s>", unk_token="<unk>")
        hf_tok.chat_template = template
        return list(hf_tok.apply_chat_template(messages, tokenize=True, return_dict=False, **kw))

    history = [{"role": "system", "content": "Be brief. "}, {"role": "user", "content": " Speak, speak! "}]
    finished = history + [{"role": "assistant", "content": " First Citizen."}]
    assert render(CHAT_TEMPLATE, history, add_generation_prompt=True) == encode_chat_prompt(history, tok)
    assert render(CHAT_TEMPLATE, finished) == encode_chat_example(finished, tok).ids

    template = resolve_template("translate")
    text_template = chat_template_for(type("Task", (), {"template": template})())
    user = [{"role": "user", "content": "Speak, speak!"}]
    assert render(text_template, user, add_generation_prompt=True) == encode_text_prompt(template, "Speak, speak!", tok)
    record = {"source": "Speak, speak!", "target": "Parlez."}
    # (one string merges across the prompt/response seam, which training keeps: the same pieces' text)
    spelled = lambda ids: "".join(hf.id_to_token(i) for i in ids)  # noqa: E731
    assert spelled(render(text_template, user + [{"role": "assistant", "content": "Parlez."}])) == \
        spelled(encode_text_example(template, record, tok, "test").ids)


def test_byte_fallback_runs_decode_as_utf8_so_a_cut_character_costs_only_itself():
    """SentencePiece-style tokenizers spell characters outside their vocabulary as byte tokens
    (<0xE4>...). tokenizers' ByteFallback decoder makes a whole run one U+FFFD per byte as soon as
    any of it is not UTF-8: a completion stopped inside a character lost the characters before it,
    and streamed text was not the start of the final text. Runs now decode as Python decodes bytes."""
    from tokenizers import Tokenizer

    from llmkit.data.tokenizer import TextTokenizer, token_byte_lengths
    from llmkit.inference.engine import _TextTracker

    hf, names = _llama_style_tokenizer()
    data = json.loads(hf.to_str())
    vocab = data["model"]["vocab"]
    for byte in range(256):
        vocab.setdefault(f"<0x{byte:02X}>", len(vocab))
    hf = Tokenizer.from_str(json.dumps(data))
    tok = TextTokenizer(hf, np.asarray(token_byte_lengths(hf)), roles={"bos": names["bos_token"], "eos": names["eos_token"],
                                                                        "pad": names["eos_token"]})
    text = "Speak 你界 x"
    ids = tok.encode(text)
    assert sum(hf.id_to_token(i).startswith("<0x") for i in ids) >= 6  # both characters spelled in bytes
    assert tok.decode(ids) == hf.decode(ids) == text  # whole characters: as tokenizers decodes them
    inside = next(k for k in range(len(ids)) if hf.decode(ids[:k]).endswith("\ufffd" * 4))  # 你 and a byte of 界
    assert hf.decode(ids[:inside]) == "Speak " + "\ufffd" * 4  # (what it was)
    assert tok.decode(ids[:inside]) == "Speak 你\ufffd"
    # streaming, token by token: what is shown is always the start of the final text, and all of it at the end
    tracker = _TextTracker(tok.decode_continuation, stop=[], streaming=True)
    shown = ""
    for token in ids:
        tracker.add(token)
        shown += tracker.pop_stream()
        assert tok.decode_continuation(ids).startswith(shown)
    assert shown + tracker.pop_stream(finished=True) == tok.decode_continuation(ids)
    # a long completion's text keeps all but its last ids decoded: the rest decoded after text keeps its first space
    long_ids = tok.encode((text + " First Citizen. ") * 40)
    tracker = _TextTracker(tok.decode, stop=[], streaming=True, decode_after_text=tok.decode_continuation)
    for n, token in enumerate(long_ids, 1):
        tracker.add(token)
        assert tracker.text == tok.decode(long_ids[:n]), n
    assert tracker._settled > len(long_ids) / 2  # (the split moved: this checked the kept text, not whole decodings)
    assert tok.decode([ids[0], *ids[-3:]], skip_special_tokens=True) == hf.decode([ids[0], *ids[-3:]])
    assert tok.decode([tok.bos_id, *ids], skip_special_tokens=True) == text


def test_a_completion_after_text_keeps_the_space_sentencepiece_drops_at_the_start(tokenizer_dir):
    """A Llama-style decoder drops the space of a text's first "▁word" token; a completion goes on
    mid-text, so it keeps it: prompt + completion reads as the ids decoded together. Byte-level BPE
    (llmkit's own, GPT-2's) decodes completions as before."""
    from llmkit.data.tokenizer import TextTokenizer, load_tokenizer, token_byte_lengths
    from llmkit.inference.engine import GenerationParams, Generator

    hf, names = _llama_style_tokenizer()
    tok = TextTokenizer(hf, np.asarray(token_byte_lengths(hf)), roles={"bos": names["bos_token"], "eos": names["eos_token"],
                                                                        "pad": names["eos_token"]})
    ids = tok.encode_continuation(" First Citizen")
    assert tok.decode(ids) == "First Citizen" and tok.decode_continuation(ids) == " First Citizen"
    own = load_tokenizer(tokenizer_dir)
    gpt2_style = TextTokenizer(*(lambda t: (t, token_byte_lengths(t)))(_gpt2_style_tokenizer()[0]),
                               roles={"bos": "<|endoftext|>", "eos": "<|endoftext|>", "pad": "<|endoftext|>"})
    for byte_level in (own, gpt2_style):
        for text in (" First Citizen", "First", " 東京 🙂"):
            ids = byte_level.encode(text)
            assert byte_level.decode_continuation(ids) == byte_level.decode(ids) == text
    torch.manual_seed(0)
    model = GPT(ModelConfig(vocab_size=tok.vocab_size, context_length=32, n_layer=1, n_head=2, n_embd=16)).eval()
    generator = Generator(model, tok)
    prompt = "Citizen: hear me"
    params = GenerationParams(max_new_tokens=6, temperature=1.0, stop_at_eos=False)
    completions = generator.complete([prompt], params, num_samples=16, extra_stop_ids=())  # (a random model's specials: text here)
    assert any(hf.id_to_token(c.token_ids[0]).startswith("▁") for c in completions)
    passed = {*tok.end_ids, generator.start_id}  # (past an end, the boundaries it goes through are no text)
    for c in completions:
        assert prompt + c.text == tok.decode(generator.encode_prompt(prompt)[1:] + [i for i in c.token_ids if i not in passed])


@pytest.mark.parametrize("case", ["gpt2", "llama-gqa"])
def test_a_config_json_its_weights_do_not_fit_is_refused_before_a_model_that_size_is_built(cli, tmp_path, tokenizer_dir, case):
    """n_layer 10**9 collected names per layer until memory ran out; a hidden size of 2**40 was an
    unexpected error; a config.json nested past Python's stack too."""
    from tokenizers import Tokenizer

    vocab = Tokenizer.from_file(str(tokenizer_dir / "tokenizer.json")).get_vocab_size()
    src = tmp_path / "hf"
    _save_hf_model(src, _hf_configs(vocab)[case], tokenizer_dir)
    config = json.loads((src / "config.json").read_text())
    layers, width = ("n_layer", "n_embd") if case == "gpt2" else ("num_hidden_layers", "hidden_size")
    for change, said in (({layers: 10**9}, "config.json says 1000000000 layer(s)"),
                         ({layers: 1}, "config.json says 1 layer(s) (n_layer / num_hidden_layers), but the weights hold 2"),
                         ({width: 2**40}, f"config.json makes the embedding ({vocab}, 1099511627776)" if case == "gpt2"
                          else "head_dim=16 != hidden_size / num_attention_heads")):  # (a Llama's head size: said first)
        (src / "config.json").write_text(json.dumps({**config, **change}))
        assert said in _error(cli("import", src, "-o", tmp_path / "x")) and not (tmp_path / "x").exists()
    (src / "config.json").write_text("[" * 100_000 + "]" * 100_000)
    assert "config.json is not valid JSON" in _error(cli("import", src, "-o", tmp_path / "x"))
    (src / "config.json").write_text(json.dumps(config))
    (src / "tokenizer_config.json").write_text("[" * 100_000 + "]" * 100_000)  # (read as unreadable: config.json's ids)
    result = cli("import", src, "-o", tmp_path / "x")
    assert "unexpected" not in result.output and "RecursionError" not in result.output, result.output


def test_import_refuses_quantized_models_and_shards_outside_the_folder(cli, tmp_path, tokenizer_dir):
    from safetensors.torch import load_file, save_file
    from tokenizers import Tokenizer

    vocab = Tokenizer.from_file(str(tokenizer_dir / "tokenizer.json")).get_vocab_size()
    src = tmp_path / "hf"
    _save_hf_model(src, _hf_configs(vocab)["llama-gqa"], tokenizer_dir)
    config = json.loads((src / "config.json").read_text())
    (src / "config.json").write_text(json.dumps({**config, "quantization_config": {"quant_method": "gptq", "bits": 4}}))
    assert "quantized model (gptq)" in _error(cli("import", src, "-o", tmp_path / "q"))
    (src / "config.json").write_text(json.dumps(config))
    state = load_file(str(src / "model.safetensors"))
    name = next(k for k in state if k.endswith("q_proj.weight"))
    save_file({**state, name: state[name].to(torch.float8_e4m3fn)}, str(src / "model.safetensors"))
    assert "stored as float8_e4m3fn" in _error(cli("import", src, "-o", tmp_path / "q"))
    save_file(state, str(tmp_path / "elsewhere.safetensors"))
    (src / "model.safetensors").unlink()
    (src / "model.safetensors.index.json").write_text(json.dumps({"weight_map": {k: "../elsewhere.safetensors" for k in state}}))
    assert "outside" in _error(cli("import", src, "-o", tmp_path / "q"))
    assert not (tmp_path / "q").exists()


def test_a_tied_config_with_a_different_stored_head_imports_untied(cli, tmp_path, tokenizer_dir):
    """transformers keeps an lm_head that differs from the embedding (and says so); so does import."""
    from safetensors.torch import load_file, save_file
    from tokenizers import Tokenizer
    from transformers import AutoModelForCausalLM

    vocab = Tokenizer.from_file(str(tokenizer_dir / "tokenizer.json")).get_vocab_size()
    src = tmp_path / "hf"
    _save_hf_model(src, _hf_configs(vocab)["llama-attn-bias-untied"], tokenizer_dir)
    config = json.loads((src / "config.json").read_text())
    (src / "config.json").write_text(json.dumps({**config, "tie_word_embeddings": True}))
    result = cli("import", src, "-o", tmp_path / "ckpt")
    assert result.exit_code == 0 and "imported untied" in result.output, result.output
    loaded = load_checkpoint(tmp_path / "ckpt")
    assert loaded.config.tie_embeddings is False
    head = load_file(str(src / "model.safetensors"))["lm_head.weight"]
    assert torch.equal(loaded.model.lm_head.weight, head)
    hf_model = AutoModelForCausalLM.from_pretrained(src).eval()
    if not torch.equal(hf_model.lm_head.weight, hf_model.model.embed_tokens.weight):  # transformers 5 keeps the head
        idx = _tokens(vocab, seed=2)
        with torch.no_grad():
            assert torch.allclose(loaded.model(idx)[0], hf_model(idx).logits, atol=TOL, rtol=0)
    del save_file


def test_import_names_missing_tokenizer_files_and_an_eos_not_marked_special(cli, tmp_path, tokenizer_dir):
    from tokenizers import Tokenizer

    vocab = Tokenizer.from_file(str(tokenizer_dir / "tokenizer.json")).get_vocab_size()
    src = tmp_path / "hf"
    _save_hf_model(src, _hf_configs(vocab)["gpt2"], tokenizer_dir)
    tokenizer_json = json.loads((src / "tokenizer.json").read_text())
    for name in ("tokenizer.json", "tokenizer_config.json"):
        (src / name).rename(tmp_path / name)
    assert "has no tokenizer vocabulary" in _error(cli("import", src, "-o", tmp_path / "x"))
    (tmp_path / "tokenizer_config.json").rename(src / "tokenizer_config.json")
    # from tokenizer_config.json alone transformers builds a tokenizer of its special tokens, which
    # encoded every text to nothing: it was imported as the checkpoint's
    assert "has no tokenizer vocabulary" in _error(cli("import", src, "-o", tmp_path / "x"))
    for token in tokenizer_json["added_tokens"]:
        token["special"] = False
    (src / "tokenizer.json").write_text(json.dumps(tokenizer_json))
    line = _error(cli("import", src, "-o", tmp_path / "x"))
    assert "names eos '<|eos|>', but its tokenizer.json does not mark that token special" in line, line
    # a bos named but not special is refused too: falling back to eos would start every prompt with another token
    for token in tokenizer_json["added_tokens"]:
        token["special"] = token["content"] != "<|bos|>"
    (src / "tokenizer.json").write_text(json.dumps(tokenizer_json))
    line = _error(cli("import", src, "-o", tmp_path / "x"))
    assert "names bos '<|bos|>', but its tokenizer.json does not mark that token special" in line, line
    assert not (tmp_path / "x").exists()
    # a token the vocabulary does not have at all: marking it special would add a token without an embedding
    settings = json.loads((src / "tokenizer_config.json").read_text())
    (src / "tokenizer_config.json").write_text(json.dumps(dict(settings, eos_token="<|end|>")))
    line = _error(cli("import", src, "-o", tmp_path / "x"))
    assert "names eos '<|end|>', which its tokenizer's vocabulary does not have" in line, line
    (src / "tokenizer_config.json").write_text(json.dumps(settings))
    # half of a vocab.json + merges.txt pair: the missing one named (transformers' own message named neither,
    # and was cut mid-word)
    (src / "tokenizer.json").unlink()
    (src / "vocab.json").write_text(json.dumps(tokenizer_json["model"]["vocab"]))
    line = _error(cli("import", src, "-o", tmp_path / "x"))
    assert "has vocab.json but no merges.txt" in line, line
    (src / "vocab.json").unlink()
    # WordPiece (BERT's): its "##" pieces decode wrongly one at a time and are not bytes of text
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers

    wordpiece = Tokenizer(models.WordPiece({"[UNK]": 0, "<|bos|>": 1, "<|eos|>": 2, "<|pad|>": 3, "hel": 4, "##lo": 5},
                                           unk_token="[UNK]"))
    wordpiece.pre_tokenizer, wordpiece.decoder = pre_tokenizers.Whitespace(), decoders.WordPiece()
    wordpiece.save(str(src / "tokenizer.json"))
    line = _error(cli("import", src, "-o", tmp_path / "x"))
    assert "is a WordPiece tokenizer (BERT's kind), which llmkit does not import" in line, line
    assert not (tmp_path / "x").exists()
    # a pre-tokenizer that drops the whitespace between words (its text decoded "First CitizenCitizen", its bytes
    # undercounted: a review), alone or in a sequence
    for pre in (pre_tokenizers.Whitespace(), pre_tokenizers.Sequence([pre_tokenizers.Digits(), pre_tokenizers.WhitespaceSplit()]),
                pre_tokenizers.CharDelimiterSplit(" "), pre_tokenizers.Split(" ", behavior="removed")):
        words = Tokenizer(models.WordLevel({"[UNK]": 0, "<|bos|>": 1, "<|eos|>": 2, "<|pad|>": 3, "hello": 4}, unk_token="[UNK]"))
        words.pre_tokenizer = pre
        words.save(str(src / "tokenizer.json"))
        line = _error(cli("import", src, "-o", tmp_path / "x"))
        assert "which drops the whitespace between words: llmkit does not import it" in line, line
        assert ("WhitespaceSplit" if isinstance(pre, pre_tokenizers.Sequence) else "Whitespace" if isinstance(
            pre, pre_tokenizers.Whitespace) else "Delimiter" if isinstance(pre, pre_tokenizers.CharDelimiterSplit) else "Removed") in line
    assert not (tmp_path / "x").exists()


def test_import_stops_at_the_end_of_turn_ids_of_generation_config_and_exports_them_back(cli, tmp_path, tokenizer_dir):
    """A chat fine-tune's generation_config.json adds its end-of-turn token to eos (Llama 3's
    <|eot_id|>, ChatML's <|im_end|>): generate stopped only at eos, so a reply ran on through the
    next turn. The tokens are kept in tokenizer/special_tokens.json, generation stops at them, and
    export writes them back."""
    from tokenizers import Tokenizer

    vocab = Tokenizer.from_file(str(tokenizer_dir / "tokenizer.json")).get_vocab_size()
    src = tmp_path / "hf"
    model = _save_hf_model(src, _hf_configs(vocab)["llama-attn-bias-untied"], tokenizer_dir)
    tok = load_tokenizer(tokenizer_dir)
    end = tok.special_ids["<|user|>"]
    with torch.no_grad():  # a model whose every next token is <|user|>: the blocks add nothing, the head picks it
        for layer in model.model.layers:
            for added in (layer.self_attn.o_proj, layer.mlp.down_proj):
                added.weight.zero_()
                if added.bias is not None:
                    added.bias.zero_()
        model.model.embed_tokens.weight.fill_(0.5)
        model.model.norm.weight.fill_(1.0)
        model.lm_head.weight.zero_()
        model.lm_head.weight[end] = 1.0
    model.save_pretrained(src)
    settings = json.loads((src / "tokenizer_config.json").read_text())
    (src / "tokenizer_config.json").write_text(json.dumps({**settings, "chat_template": "{{ messages[0]['content'] }}"}))
    (src / "generation_config.json").write_text(json.dumps({"eos_token_id": [tok.eos_id, end]}))
    result = cli("import", src, "-o", tmp_path / "ckpt")
    assert result.exit_code == 0, result.output
    assert (tmp_path / "ckpt" / TOKENIZER_DIR / "chat_template.jinja").read_text() == "{{ messages[0]['content'] }}"
    roles = json.loads((tmp_path / "ckpt" / TOKENIZER_DIR / "special_tokens.json").read_text())
    assert roles["end_of_turn"] == ["<|user|>"]
    assert load_checkpoint(tmp_path / "ckpt").tokenizer.end_ids == [tok.eos_id, end]
    made = cli("generate", tmp_path / "ckpt", "-p", "Speak", "--greedy", "-n", "6", "-o", tmp_path / "out.jsonl")
    assert made.exit_code == 0, made.output
    row = json.loads((tmp_path / "out.jsonl").read_text())
    assert row["finish_reason"] == "eos" and row["completion"] == "", row  # it ran on for all 6 tokens
    assert cli("export", tmp_path / "ckpt", "-o", tmp_path / "again").exit_code == 0
    assert json.loads((tmp_path / "again" / "generation_config.json").read_text())["eos_token_id"][:2] == [tok.eos_id, end]
    assert cli("import", tmp_path / "again", "-o", tmp_path / "back").exit_code == 0
    assert (tmp_path / "back" / TOKENIZER_DIR / "special_tokens.json").read_text() == \
        (tmp_path / "ckpt" / TOKENIZER_DIR / "special_tokens.json").read_text()


CHATML = ("{% for message in messages %}{{ '<|im_start|>' + message['role'] + '\\n' + message['content'] + '<|im_end|>\\n' }}"
          "{% endfor %}{% if add_generation_prompt %}{{ '<|im_start|>assistant\\n' }}{% endif %}")


def test_an_imported_chat_model_is_prompted_in_its_own_template_until_fine_tuned(cli, tmp_path, tokenizer_dir, monkeypatch):
    """An imported chat model (ChatML here) keeps its Jinja template: chat and generate's
    {"messages"} prompts render it as transformers' apply_chat_template does, and export writes it
    back. A checkpoint fine-tuned in llmkit is prompted in the format it learned instead."""
    from tokenizers import Tokenizer
    from transformers import AutoModelForCausalLM, AutoTokenizer, PreTrainedTokenizerFast

    hf_tok = Tokenizer.from_file(str(tokenizer_dir / "tokenizer.json"))
    hf_tok.add_special_tokens(["<|im_start|>", "<|im_end|>"])
    src = tmp_path / "hf"
    hf_config = _hf_configs(hf_tok.get_vocab_size())["gpt2"]
    torch.manual_seed(0)
    AutoModelForCausalLM.from_config(hf_config).save_pretrained(src)
    PreTrainedTokenizerFast(tokenizer_object=hf_tok, bos_token="<|bos|>", eos_token="<|eos|>", pad_token="<|pad|>",
                            chat_template=CHATML).save_pretrained(src)
    assert cli("import", src, "-o", tmp_path / "ckpt").exit_code == 0
    assert (tmp_path / "ckpt" / TOKENIZER_DIR / "chat_template.jinja").read_text() == CHATML
    loaded = load_checkpoint(tmp_path / "ckpt")
    theirs = AutoTokenizer.from_pretrained(src, local_files_only=True)
    talk = [{"role": "system", "content": "Be brief."}, {"role": "user", "content": "Speak, <|im_end|> speak!"}]
    from llmkit.data.templates import encode_chat_prompt

    expected = list(theirs.apply_chat_template(talk, add_generation_prompt=True, tokenize=True, return_dict=False))
    assert encode_chat_prompt(talk, loaded.tokenizer) == expected
    (tmp_path / "talk.jsonl").write_text(json.dumps({"messages": talk}) + "\n")
    made = cli("generate", tmp_path / "ckpt", "--prompts", tmp_path / "talk.jsonl", "-n", "2", "--greedy", "-o", tmp_path / "g.jsonl")
    assert made.exit_code == 0, made.output
    assert json.loads((tmp_path / "g.jsonl").read_text())["prompt_tokens"] == len(expected)
    from typer.testing import CliRunner

    from llmkit.cli import app

    chatted = CliRunner().invoke(app, ["chat", str(tmp_path / "ckpt"), "--greedy", "-n", "2"], input="Hello\n/exit\n")
    assert chatted.exit_code == 0 and "the model's own" in chatted.output and "never fine-tuned" not in chatted.output, \
        chatted.output
    # its own template has a system message (generate's message prompts rendered one; chat refused --system as if text)
    from llmkit.data import templates

    rendered, render = [], templates.encode_chat_prompt
    monkeypatch.setattr(templates, "encode_chat_prompt", lambda messages, tok: rendered.append(render(messages, tok)) or rendered[-1])
    told = CliRunner().invoke(app, ["chat", str(tmp_path / "ckpt"), "--system", "Be brief.", "--greedy", "-n", "2"],
                              input="Speak, <|im_end|> speak!\n")
    assert told.exit_code == 0 and expected in rendered, told.output  # (the model saw what transformers renders)
    monkeypatch.undo()
    assert cli("export", tmp_path / "ckpt", "-o", tmp_path / "again").exit_code == 0
    assert AutoTokenizer.from_pretrained(tmp_path / "again", local_files_only=True).chat_template == CHATML
    # imported again, the same checkpoint: its fingerprint too (the export's document_start made it another)
    assert cli("import", tmp_path / "again", "-o", tmp_path / "reimported").exit_code == 0
    assert artifacts.load(tmp_path / "reimported").fingerprint == artifacts.load(tmp_path / "ckpt").fingerprint
    # a template that refuses a conversation (here: a role it has no place for) is one line
    refusing = "{% for m in messages %}{% if m['role'] == 'system' %}{{ raise_exception('no system role') }}{% endif %}{% endfor %}"
    loaded.tokenizer.own_chat_template = refusing
    del loaded.tokenizer._own_chat
    with pytest.raises(Exception, match="the model's chat template refused the conversation .*no system role"):
        encode_chat_prompt(talk, loaded.tokenizer)
    # a template is code from the model's folder: one that loops, or writes far more than the talk, is stopped
    from llmkit.data import tokenizer as tokenizer_module

    monkeypatch.setattr(tokenizer_module, "RENDER_SECONDS", 0.3)
    for bomb, said in (("{% for i in range(99999) %}{% for j in range(99999) %}{% endfor %}{% endfor %}",
                        "took more than 0.3 s to render one conversation"),
                       ("{{ 'x' * 3000000 }}", "rendered 3,000,000 characters from")):
        loaded.tokenizer.own_chat_template = bomb
        del loaded.tokenizer._own_chat
        with pytest.raises(Exception, match=said):
            encode_chat_prompt(talk, loaded.tokenizer)
    monkeypatch.undo()
    # a caller's own timer is left as it was (the limit cancelled it), and so is its handler
    import signal

    previous = signal.signal(signal.SIGALRM, lambda *_: None)
    signal.setitimer(signal.ITIMER_REAL, 30.0)
    try:
        loaded.tokenizer.own_chat_template = CHATML
        del loaded.tokenizer._own_chat
        assert encode_chat_prompt(talk, loaded.tokenizer) == expected
        assert signal.getitimer(signal.ITIMER_REAL)[0] > 25
    finally:
        signal.setitimer(signal.ITIMER_REAL, 0)
        signal.signal(signal.SIGALRM, previous)
    # fine-tuned in llmkit: its task.json's format, not the import's template
    (tmp_path / "sft.jsonl").write_text("".join(json.dumps({"prompt": f"Say {w}.", "response": w}) + "\n" for w in ("a", "b") * 4))
    assert cli("finetune", tmp_path / "ckpt", "--template", "plain", "--data", tmp_path / "sft.jsonl", "--max-steps", "1",
               "--batch-size", "4", "--val-fraction", "0", "-o", tmp_path / "sft").exit_code == 0
    assert (tmp_path / "sft" / TOKENIZER_DIR / "chat_template.jinja").is_file()
    assert load_checkpoint(tmp_path / "sft").tokenizer.own_chat_template is None
    # --template chat (the default) fine-tunes it in its own format: each assistant turn learned, through what ends
    # it (<|im_end|> and its newline), as at inference, where the fine-tune is prompted in that same template
    from llmkit.data.templates import encode_example, own_chat_format

    chat = [{"role": "system", "content": "Be brief."}, {"role": "user", "content": "Hi"},
            {"role": "assistant", "content": "Hello there"}, {"role": "user", "content": "Bye"},
            {"role": "assistant", "content": "Farewell"}]
    loaded = load_checkpoint(tmp_path / "ckpt")
    example = encode_example(own_chat_format(CHATML), {"messages": chat}, loaded.tokenizer, "test")
    assert example.ids == list(theirs.apply_chat_template(chat, tokenize=True, return_dict=False))
    learned = [theirs.decode([t]) for t, flag in zip(example.ids, example.learn) if flag]
    assert "".join(learned) == "Hello there<|im_end|>\nFarewell<|im_end|>\n"
    # cut to fit (--truncate): the assistant message cut at its end, before the reply, is not learned; the reply is
    from llmkit.finetune.data import shorten

    long = [*chat[1:2], dict(chat[2], content="Hello there " * 12), *chat[3:]]
    whole = encode_example(own_chat_format(CHATML), {"messages": long}, loaded.tokenizer, "test")
    cut, _ = shorten(own_chat_format(CHATML), {"messages": long}, whole, loaded.tokenizer, len(whole.ids) - 10, "test")
    learned = "".join(theirs.decode([t]) for t, flag in zip(cut.ids, cut.learn) if flag)
    assert learned == "Farewell<|im_end|>\n" and len(cut.ids) <= len(whole.ids) - 10, learned
    (tmp_path / "chat.jsonl").write_text("".join(json.dumps({"messages": chat[1:3]}) + "\n" for _ in range(8)))  # (context 64)
    tuned = cli("finetune", tmp_path / "ckpt", "--data", tmp_path / "chat.jsonl", "--max-steps", "1", "--batch-size", "4",
                "--val-fraction", "0", "-o", tmp_path / "own")
    assert tuned.exit_code == 0, tuned.output
    assert json.loads((tmp_path / "own" / "task.json").read_text())["template"]["jinja"] == CHATML
    own = load_checkpoint(tmp_path / "own")
    assert own.tokenizer.own_chat_template == CHATML and encode_chat_prompt(talk, own.tokenizer) == expected
    assert cli("export", tmp_path / "own", "-o", tmp_path / "own-hf").exit_code == 0
    assert AutoTokenizer.from_pretrained(tmp_path / "own-hf", local_files_only=True).chat_template == CHATML
    # eval scores its replies (the conversation starts with <|im_start|>, no start-of-text token: it was refused)
    scored = cli("eval", tmp_path / "own", "--data", tmp_path / "chat.jsonl", "-o", tmp_path / "own-eval")
    assert scored.exit_code == 0, scored.output
    # exported and imported again, task.json keeps the template (the tokenizer no longer has it): it fine-tunes on
    assert cli("import", tmp_path / "own-hf", "-o", tmp_path / "own-back").exit_code == 0
    again = cli("finetune", tmp_path / "own-back", "--data", tmp_path / "chat.jsonl", "--max-steps", "1", "--batch-size", "4",
                "--val-fraction", "0", "-o", tmp_path / "own-again")
    assert again.exit_code == 0 and json.loads((tmp_path / "own-again" / "task.json").read_text())["template"]["jinja"] == CHATML
    # a template that marks the assistant's turns ({% generation %}): learned as transformers' mask has them
    marked = CHATML.replace("{{ '<|im_start|>' + message['role'] + '\\n' + message['content'] + '<|im_end|>\\n' }}",
                            "{% if message['role'] == 'assistant' %}{{ '<|im_start|>assistant\\n' }}{% generation %}"
                            "{{ message['content'] + '<|im_end|>' }}{% endgeneration %}{{ '\\n' }}{% else %}"
                            "{{ '<|im_start|>' + message['role'] + '\\n' + message['content'] + '<|im_end|>\\n' }}{% endif %}")
    assert marked != CHATML
    loaded.tokenizer.own_chat_template = marked
    del loaded.tokenizer._own_chat
    example = encode_example(own_chat_format(marked), {"messages": chat}, loaded.tokenizer, "test")
    theirs.chat_template = marked
    mask = theirs.apply_chat_template(chat, tokenize=True, return_dict=True, return_assistant_tokens_mask=True)["assistant_masks"]
    assert example.learn == [bool(flag) for flag in mask] and any(mask)
    trimmed = marked.replace("{% generation %}", "{%- generation -%}").replace("{% endgeneration %}", "{%- endgeneration -%}")
    loaded.tokenizer.own_chat_template = trimmed  # (whitespace control on the marks: the same mask)
    del loaded.tokenizer._own_chat
    assert encode_example(own_chat_format(trimmed), {"messages": chat}, loaded.tokenizer, "test").learn == example.learn
    # one that renders an earlier reply otherwise once a message follows (as Qwen3 drops an earlier <think>): the
    # last reply is learned, the other not (the run was refused); a template's own refusal names the record
    shifting = CHATML.replace("message['content'] + '<|im_end|>", "(message['content'] | upper if message['role'] == "
                              "'assistant' and not loop.last else message['content']) + '<|im_end|>")
    assert shifting != CHATML
    loaded.tokenizer.own_chat_template = shifting
    del loaded.tokenizer._own_chat
    example = encode_example(own_chat_format(shifting), {"messages": chat}, loaded.tokenizer, "test")
    learned = "".join(theirs.decode([t]) for t, flag in zip(example.ids, example.learn) if flag)
    assert learned == "Farewell<|im_end|>\n" and example.unlearned_turns == 1
    loaded.tokenizer.own_chat_template = refusing
    del loaded.tokenizer._own_chat
    with pytest.raises(Exception, match="^chat.jsonl:7: the model's chat template refused the conversation"):
        encode_example(own_chat_format(refusing), {"messages": chat}, loaded.tokenizer, "chat.jsonl:7")


def test_import_reads_odd_but_loadable_folders_and_names_malformed_files(cli, tmp_path, tokenizer_dir):
    """What transformers loads, import loads: a pad_token_id of -1 (early Llama conversions) is no
    pad, a tokenizer_config.json that is no object is no settings. A malformed index, export
    record or stray bias is a one-line error, and a missing input makes no folders for -o."""
    from safetensors.torch import load_file, save_file
    from tokenizers import Tokenizer

    vocab = Tokenizer.from_file(str(tokenizer_dir / "tokenizer.json")).get_vocab_size()
    src = tmp_path / "hf"
    _save_hf_model(src, _hf_configs(vocab)["llama-attn-bias-untied"], tokenizer_dir)
    config = json.loads((src / "config.json").read_text())
    (src / "config.json").write_text(json.dumps(dict(config, pad_token_id=-1)))
    settings = json.loads((src / "tokenizer_config.json").read_text())
    (src / "tokenizer_config.json").write_text(json.dumps([settings]))
    result = cli("import", src, "-o", tmp_path / "odd")
    assert result.exit_code == 0, result.output
    assert (load_checkpoint(tmp_path / "odd").tokenizer.bos_id, load_checkpoint(tmp_path / "odd").tokenizer.eos_id) == (0, 1)
    # a bos_token_id on an ordinary token (LlamaConfig's default kept with another tokenizer) names no bos: eos serves
    (src / "config.json").write_text(json.dumps(dict(config, pad_token_id=-1, bos_token_id=100)))
    assert cli("import", src, "-o", tmp_path / "default-bos").exit_code == 0
    assert load_checkpoint(tmp_path / "default-bos").tokenizer.bos_id == 1
    (src / "config.json").write_text(json.dumps(dict(config, pad_token_id=-1)))

    (src / "llmkit_model_config.json").write_text(json.dumps({"model_config": [1, 2], "tokenizer_post_processor": {"type": "?"}}))
    assert "tokenizer_post_processor in llmkit_model_config.json" in _error(cli("import", src, "-o", tmp_path / "a"))
    (src / "llmkit_model_config.json").write_text(json.dumps({"model_config": [1, 2]}))  # not a config: the imported one stands
    assert cli("import", src, "-o", tmp_path / "b").exit_code == 0

    weights = load_file(src / "model.safetensors")  # attention_bias true, mlp_bias false: MLP biases are not the model's
    save_file({**weights, "model.layers.0.mlp.down_proj.bias": torch.ones(48)}, src / "model.safetensors")
    line = _error(cli("import", src, "-o", tmp_path / "c"))
    assert "no place for" in line and "model.layers.0.mlp.down_proj.bias" in line, line
    (src / "model.safetensors").rename(src / "model-00001-of-00001.safetensors")
    (src / "model.safetensors.index.json").write_text(json.dumps({"weight_map": []}))
    assert "not a valid safetensors index" in _error(cli("import", src, "-o", tmp_path / "d"))

    for command in ("import", "export"):
        assert "no such" in _error(cli(command, tmp_path / "missing", "-o", tmp_path / command / "deep" / "out")).lower()
        assert not (tmp_path / command).exists()


def _save_hf_model(folder: Path, hf_config, tokenizer_dir: Path, seed: int = 0) -> torch.nn.Module:
    from transformers import AutoModelForCausalLM, PreTrainedTokenizerFast

    torch.manual_seed(seed)
    model = AutoModelForCausalLM.from_config(hf_config).eval()
    _perturb(model, seed)
    model.save_pretrained(folder)  # safetensors
    PreTrainedTokenizerFast(
        tokenizer_file=str(tokenizer_dir / "tokenizer.json"), bos_token="<|bos|>", eos_token="<|eos|>", pad_token="<|pad|>"
    ).save_pretrained(folder)
    return model


def _hf_configs(vocab: int) -> dict:
    from transformers import GPT2Config, LlamaConfig

    return {
        "gpt2": GPT2Config(vocab_size=vocab, n_positions=64, n_embd=64, n_layer=2, n_head=4, bos_token_id=0, eos_token_id=1),
        "gpt2-untied-ninner": GPT2Config(
            vocab_size=vocab + 13, n_positions=48, n_embd=32, n_layer=2, n_head=2, n_inner=80, tie_word_embeddings=False,
            activation_function="gelu_pytorch_tanh", bos_token_id=0, eos_token_id=1,
        ),
        "llama-gqa": LlamaConfig(
            vocab_size=vocab, hidden_size=64, intermediate_size=128, num_hidden_layers=2, num_attention_heads=4,
            num_key_value_heads=2, max_position_embeddings=64, rope_parameters={"rope_type": "default", "rope_theta": 500000.0},
            tie_word_embeddings=True, bos_token_id=0, eos_token_id=1,
        ),
        "llama-attn-bias-untied": LlamaConfig(
            vocab_size=vocab, hidden_size=48, intermediate_size=40, num_hidden_layers=2, num_attention_heads=3,
            max_position_embeddings=64, rms_norm_eps=1e-5, attention_bias=True, mlp_bias=False,
            tie_word_embeddings=False, bos_token_id=0, eos_token_id=1,
        ),
    }


@pytest.mark.parametrize("case", ["gpt2", "gpt2-untied-ninner", "llama-gqa", "llama-attn-bias-untied"])
def test_import_gives_equal_logits(cli, tmp_path, tokenizer_dir, case):
    from tokenizers import Tokenizer

    vocab = Tokenizer.from_file(str(tokenizer_dir / "tokenizer.json")).get_vocab_size()
    hf_config = _hf_configs(vocab)[case]
    src = tmp_path / "hf"
    hf_model = _save_hf_model(src, hf_config, tokenizer_dir)
    out = tmp_path / "ckpt"
    result = cli("import", src, "-o", out)
    assert result.exit_code == 0, result.output
    assert artifacts.verify(out).ok

    loaded = load_checkpoint(out)
    assert loaded.config.vocab_size == hf_config.vocab_size
    assert loaded.config.mlp_hidden == (hf_config.n_inner or 4 * hf_config.n_embd if case.startswith("gpt2") else hf_config.intermediate_size)
    # the dropout a fine-tune of it trains with (it was 0 whatever the config said)
    assert loaded.config.dropout == (hf_config.resid_pdrop if case.startswith("gpt2") else hf_config.attention_dropout)
    idx = _tokens(vocab, seed=1, shape=(3, 30))
    with torch.no_grad():
        theirs = hf_model(idx).logits
        ours = loaded.model(idx)[0]
    assert torch.allclose(ours, theirs, atol=TOL, rtol=0), (ours - theirs).abs().max()

    tok_dir = out / TOKENIZER_DIR
    token_bytes = np.load(tok_dir / "token_bytes.npy", allow_pickle=False)
    assert token_bytes.dtype == np.int32 and token_bytes[:7].tolist() == [0] * 7
    ids = loaded.tokenizer.encode(TEXT)
    assert int(token_bytes[ids].sum()) == len(TEXT.encode("utf-8"))


def test_import_legacy_config_keys_and_base_model_prefix(cli, tmp_path, tokenizer_dir):
    """Old Llama configs keep rope_theta at top level; a base model saves keys without `model.`."""
    from safetensors.torch import load_file, save_file
    from tokenizers import Tokenizer

    vocab = Tokenizer.from_file(str(tokenizer_dir / "tokenizer.json")).get_vocab_size()
    src = tmp_path / "hf"
    hf_model = _save_hf_model(src, _hf_configs(vocab)["llama-gqa"], tokenizer_dir)
    config = json.loads((src / "config.json").read_text())
    config.pop("rope_parameters")
    config["rope_theta"] = 500000.0
    (src / "config.json").write_text(json.dumps(config))
    state = load_file(str(src / "model.safetensors"))
    save_file({k.removeprefix("model."): v for k, v in state.items()}, str(src / "model.safetensors"))

    out = tmp_path / "ckpt"
    result = cli("import", src, "-o", out)
    assert result.exit_code == 0, result.output
    loaded = load_checkpoint(out)
    assert loaded.config.rope_theta == 500000.0
    idx = _tokens(vocab, seed=2)
    with torch.no_grad():
        assert torch.allclose(loaded.model(idx)[0], hf_model(idx).logits, atol=TOL, rtol=0)


def test_import_sharded_weights_and_original_gpt2_layout(cli, tmp_path, tokenizer_dir):
    """Sharded safetensors with an index; and the layout of the original GPT-2 upload: keys
    without `transformer.` and the old causal-mask buffers `h.N.attn.bias`."""
    from safetensors.torch import load_file, save_file
    from tokenizers import Tokenizer
    from transformers import AutoModelForCausalLM

    vocab = Tokenizer.from_file(str(tokenizer_dir / "tokenizer.json")).get_vocab_size()
    sharded = tmp_path / "sharded"
    hf_model = _save_hf_model(sharded, _hf_configs(vocab)["gpt2"], tokenizer_dir)
    full = load_file(str(sharded / "model.safetensors"))
    (sharded / "model.safetensors").unlink()
    names = sorted(full)
    halves = {"model-00001-of-00002.safetensors": names[: len(names) // 2], "model-00002-of-00002.safetensors": names[len(names) // 2 :]}
    blobs = tmp_path / "blobs"  # as in a Hub cache snapshot: the shards are links to ../../blobs/<hash>
    blobs.mkdir()
    for shard, keys in halves.items():
        save_file({k: full[k] for k in keys}, str(blobs / shard), metadata={"format": "pt"})
        (sharded / shard).symlink_to(blobs / shard)
    index = {"metadata": {}, "weight_map": {k: shard for shard, keys in halves.items() for k in keys}}
    (sharded / "model.safetensors.index.json").write_text(json.dumps(index))

    legacy = tmp_path / "legacy"
    _save_hf_model(legacy, _hf_configs(vocab)["gpt2"], tokenizer_dir)
    old = {k.removeprefix("transformer."): v for k, v in full.items()}
    for i in range(2):  # (bool in some uploads: a buffer, not a weight, whatever its dtype)
        old[f"h.{i}.attn.bias"] = torch.tril(torch.ones(64, 64, dtype=torch.bool if i else torch.float32)).view(1, 1, 64, 64)
    save_file(old, str(legacy / "model.safetensors"), metadata={"format": "pt"})

    idx = _tokens(vocab, seed=6)
    with torch.no_grad():
        expected = hf_model(idx).logits
    for src in (sharded, legacy):
        result = cli("import", src, "-o", tmp_path / f"{src.name}-ckpt")
        assert result.exit_code == 0, result.output
        with torch.no_grad():
            got = load_checkpoint(tmp_path / f"{src.name}-ckpt").model(idx)[0]
        assert torch.allclose(got, expected, atol=TOL, rtol=0)
    # A shard named in the index but absent: one line, no artifact.
    (blobs / "model-00002-of-00002.safetensors").unlink()
    assert "model-00002-of-00002" in _error(cli("import", sharded, "-o", tmp_path / "broken"))
    # a folder saved sharded, then whole (save_pretrained leaves the old index), or whole, then sharded (it leaves the
    # old model.safetensors): transformers reads model.safetensors, and so does llmkit, with a note (it read the index:
    # "lacks weight shard" of a whole folder, or the other weights than transformers runs, unsaid)
    for first, then in (("20KB", None), (None, "20KB")):
        both = tmp_path / f"both-{first}"
        _save_hf_model(both, _hf_configs(vocab)["gpt2"], tokenizer_dir)
        model = AutoModelForCausalLM.from_pretrained(both, local_files_only=True)
        model.save_pretrained(both, **({"max_shard_size": first} if first else {}))
        with torch.no_grad():
            model.transformer.ln_f.weight *= 2  # (the second save's weights differ)
        model.save_pretrained(both, **({"max_shard_size": then} if then else {}))
        assert (both / "model.safetensors").is_file() and (both / "model.safetensors.index.json").is_file()
        with torch.no_grad():
            runs = AutoModelForCausalLM.from_pretrained(both, local_files_only=True)(idx).logits
        result = cli("import", both, "-o", tmp_path / f"{both.name}-ckpt")
        assert result.exit_code == 0 and "holds both model.safetensors and model.safetensors.index.json" in result.output, result.output
        with torch.no_grad():
            assert torch.allclose(load_checkpoint(tmp_path / f"{both.name}-ckpt").model(idx)[0], runs, atol=TOL, rtol=0)


def test_dtype_options_and_config_file(cli, tmp_path, tokenizer_dir):
    from safetensors import safe_open
    from transformers import AutoModelForCausalLM

    ckpt = make_checkpoint(tmp_path, "ckpt", tokenizer_dir, **EXPORT_CASES["llama-tied-gqa"])
    (tmp_path / "export.toml").write_text('[export]\ndtype = "bfloat16"\n')
    assert cli("export", ckpt, "-o", tmp_path / "hf", "--config", tmp_path / "export.toml").exit_code == 0
    with safe_open(str(tmp_path / "hf" / "model.safetensors"), "pt") as f:
        assert {f.get_tensor(k).dtype for k in f.keys()} == {torch.bfloat16}
    assert json.loads((tmp_path / "hf" / "config.json").read_text())["dtype"] == "bfloat16"
    hf_model = AutoModelForCausalLM.from_pretrained(tmp_path / "hf", local_files_only=True, dtype=torch.float32).eval()
    loaded = load_checkpoint(ckpt)
    idx = _tokens(loaded.config.vocab_size, seed=7)
    with torch.no_grad():
        diff = (hf_model(idx).logits - loaded.model(idx)[0]).abs().max()
    assert 0 < diff < 0.05  # bfloat16 rounding of the weights, nothing more

    result = cli("import", tmp_path / "hf", "-o", tmp_path / "back", "--dtype", "float16")
    assert result.exit_code == 0, result.output
    with safe_open(str(tmp_path / "back" / "model.safetensors"), "pt") as f:
        assert {f.get_tensor(k).dtype for k in f.keys()} == {torch.float16}
    assert load_checkpoint(tmp_path / "back").config.n_kv_head == 2
    assert "float64" in _error(cli("export", ckpt, "-o", tmp_path / "x", "--dtype", "float64"))


def test_only_causal_transformers_export():
    from llmkit.errors import UserError
    from llmkit.model.hf_config import hf_family

    assert hf_family(ModelConfig(**GPT2_STYLE)) == "gpt2" and hf_family(ModelConfig(**LLAMA_STYLE)) == "llama"
    with pytest.raises(UserError, match="arch='lstm'"):
        hf_family(ModelConfig(arch="lstm"))
    with pytest.raises(UserError, match="objective='mlm'"):
        hf_family(ModelConfig(objective="mlm", **LLAMA_STYLE))


@pytest.mark.parametrize("case", ["gpt2-tied-bias", "gpt2-nobias", "llama-tied-gqa", "llama-untied-bias"])
def test_export_then_import_round_trips_weights_and_config(cli, tmp_path, tokenizer_dir, case):
    from safetensors.torch import load_file

    fields = dict(GPT2_STYLE, bias=False) if case == "gpt2-nobias" else EXPORT_CASES[case]
    ckpt = make_checkpoint(tmp_path, "ckpt", tokenizer_dir, seed=3, **fields)
    assert cli("export", ckpt, "-o", tmp_path / "hf").exit_code == 0
    result = cli("import", tmp_path / "hf", "-o", tmp_path / "back")
    assert result.exit_code == 0, result.output
    before = load_file(str(ckpt / "model.safetensors"))
    after = load_file(str(tmp_path / "back" / "model.safetensors"))
    assert before.keys() == after.keys()
    for name in before:
        assert torch.equal(before[name], after[name]), name
    # byte for byte, as docs/interop.md says (a parsed comparison let key order and layout change)
    for name in ("model.safetensors", "model_config.json"):
        assert (tmp_path / "back" / name).read_bytes() == (ckpt / name).read_bytes(), name
    # The tokenizer too, byte for byte (export adds a post-processor for transformers; import puts
    # back the original), so later stages see the same tokenizer, not "another" one
    from llmkit.data.tokenizer import same_tokenizer

    assert (tmp_path / "back" / TOKENIZER_DIR / "tokenizer.json").read_bytes() == (ckpt / TOKENIZER_DIR / "tokenizer.json").read_bytes()
    assert same_tokenizer(ckpt, tmp_path / "back")
    # Same inputs, same artifact: import is deterministic.
    assert cli("import", tmp_path / "hf", "-o", tmp_path / "again").exit_code == 0
    assert artifacts.load(tmp_path / "again").fingerprint == artifacts.load(tmp_path / "back").fingerprint
    # the record of the original config is no hashed file: one edited to another kind of model is not believed
    # (an objective "mlm" made the import a bidirectional model, logits 0.33 off transformers': a review)
    record = json.loads((tmp_path / "hf" / "llmkit_model_config.json").read_text())
    record["model_config"]["objective"] = "mlm"
    (tmp_path / "hf" / "llmkit_model_config.json").write_text(json.dumps(record))
    assert cli("import", tmp_path / "hf", "-o", tmp_path / "edited").exit_code == 0
    assert json.loads((tmp_path / "edited" / "model_config.json").read_text())["objective"] == "clm"


def test_gpt2_style_gqa_exports_with_repeated_kv_heads(cli, tmp_path, tokenizer_dir):
    """GPT-2 has no grouped-query attention: the exported model repeats KV heads and the
    re-imported one is plain multi-head, computing the same logits, and bias-free as the original
    (the zero biases GPT-2's layout gave it were kept as parameters when the heads differed)."""
    ckpt = make_checkpoint(tmp_path, "ckpt", tokenizer_dir, **EXPORT_CASES["gpt2-untied-gqa-nobias"])
    assert cli("export", ckpt, "-o", tmp_path / "hf").exit_code == 0
    assert json.loads((tmp_path / "hf" / "config.json").read_text())["n_head"] == 4
    assert cli("import", tmp_path / "hf", "-o", tmp_path / "back").exit_code == 0
    a, b = load_checkpoint(ckpt), load_checkpoint(tmp_path / "back")
    assert (a.config.n_kv_head, b.config.n_kv_head) == (2, 4)
    assert (a.config.bias, b.config.bias) == (False, False)
    assert not any(name.endswith(".bias") for name in b.model.state_dict())
    idx = _tokens(a.config.vocab_size, seed=4)
    with torch.no_grad():
        assert torch.allclose(a.model(idx)[0], b.model(idx)[0], atol=TOL, rtol=0)


# ------------------------------------------------------------------------------------------
# Bad inputs: one line naming the problem, nothing written


def _error(result) -> str:
    assert result.exit_code != 0
    lines = [line for line in result.output.splitlines() if line.strip()]
    assert len(lines) == 1 and lines[0].startswith("error:"), result.output
    return lines[0]


def test_import_missing_directory(cli, tmp_path):
    message = _error(cli("import", tmp_path / "nope", "-o", tmp_path / "out"))
    assert "no such directory" in message
    assert not (tmp_path / "out").exists()


def test_import_directory_without_config(cli, tmp_path, tokenizer_dir):
    (tmp_path / "empty").mkdir()
    assert "no config.json" in _error(cli("import", tmp_path / "empty", "-o", tmp_path / "out"))
    # each of the two commands given the other's folder names the other
    checkpoint = make_checkpoint(tmp_path, "ckpt", tokenizer_dir, **EXPORT_CASES["llama-tied-gqa"])
    assert "is an llmkit artifact, not a Hugging Face model directory" in _error(cli("import", checkpoint, "-o", tmp_path / "o"))
    assert cli("export", checkpoint, "-o", tmp_path / "hf").exit_code == 0
    assert "a transformers model folder, not an llmkit artifact (no manifest.json): make it a checkpoint with llmkit import" \
        in " ".join(_error(cli("export", tmp_path / "hf", "-o", tmp_path / "hf2")).split())


def test_import_unsupported_model_type_names_it(cli, tmp_path):
    src = tmp_path / "mistral"
    src.mkdir()
    (src / "config.json").write_text(json.dumps({"model_type": "mistral", "architectures": ["MistralForCausalLM"]}))
    message = _error(cli("import", src, "-o", tmp_path / "out"))
    assert "mistral" in message and "MistralForCausalLM" in message and "gpt2" in message


def test_import_refuses_a_tokenizer_larger_than_the_model(cli, tmp_path, tokenizer_dir):
    from transformers import GPT2Config

    src = tmp_path / "mismatch"
    _save_hf_model(src, GPT2Config(vocab_size=100, n_positions=16, n_embd=32, n_layer=1, n_head=2), tokenizer_dir)
    message = _error(cli("import", src, "-o", tmp_path / "out"))
    assert "320 tokens" in message and "100 embeddings" in message
    assert not (tmp_path / "out").exists()


def test_a_model_with_more_rows_than_its_tokenizer_generates_only_tokens(cli, tmp_path, tokenizer_dir):
    """A padded vocabulary (1,001 output rows, 320 tokens), as many real checkpoints have: generation picked
    rows no text stands for, and crashed decoding them or dropped them from the text unsaid."""
    from transformers import GPT2Config

    from llmkit.inference.engine import GenerationParams, Generator
    from llmkit.model.io import load_checkpoint

    src = tmp_path / "padded"
    hf = _save_hf_model(src, GPT2Config(vocab_size=1001, n_positions=64, n_embd=32, n_layer=1, n_head=2), tokenizer_dir)
    with torch.no_grad():
        hf.lm_head.weight[320:] *= 50  # (the padded rows win every step unless they are left out)
    hf.save_pretrained(src)
    assert cli("import", src, "-o", tmp_path / "ckpt").exit_code == 0
    generator = Generator.for_checkpoint(load_checkpoint(tmp_path / "ckpt"))
    for params in (GenerationParams(max_new_tokens=30, temperature=0.0), GenerationParams(max_new_tokens=30, temperature=1.0, seed=3),
                   GenerationParams(max_new_tokens=30, temperature=1.0, seed=3, repetition_penalty=1.3)):
        out = generator.complete(["hello there"], params)[0]
        assert out.token_ids and max(out.token_ids) < 320, params
        assert out.text == generator.tokenizer.decode(out.token_ids).removesuffix("\ufffd")
    result = cli("generate", tmp_path / "ckpt", "-p", "hello", "-n", "15", "--greedy")
    assert result.exit_code == 0, result.output
    # exported, transformers' own greedy generate() (its generation_config.json, nothing passed) gives llmkit's tokens:
    # the padded rows suppressed, and the stop at any special token (its eos only, until 2026-12-07: it picked the
    # padded rows from the first step, and went on past a <|bos|> where llmkit stopped)
    from transformers import AutoModelForCausalLM, AutoTokenizer

    assert cli("export", tmp_path / "ckpt", "-o", tmp_path / "back-hf").exit_code == 0
    hf_model = AutoModelForCausalLM.from_pretrained(tmp_path / "back-hf", local_files_only=True).eval()
    hf_tok = AutoTokenizer.from_pretrained(tmp_path / "back-hf", local_files_only=True)
    bos = generator.tokenizer.bos_id
    with torch.no_grad():  # the start token as likely as the padded row that wins after "hello there": picked at once
        first = hf_model(hf_tok("hello there", return_tensors="pt")["input_ids"]).logits[0, -1]
        hf_model.lm_head.weight[bos] = hf_model.lm_head.weight[320 + int(first[320:].argmax())]
    hf_model.save_pretrained(tmp_path / "back-hf")
    assert cli("import", tmp_path / "back-hf", "-o", tmp_path / "again").exit_code == 0
    ours = Generator.for_checkpoint(load_checkpoint(tmp_path / "again"))
    stopped = 0
    for prompt in ("hello there", "the", "a b c", "zz"):
        mine = ours.complete([prompt], GenerationParams(max_new_tokens=20, temperature=0.0))[0]
        ids = hf_tok(prompt, return_tensors="pt")["input_ids"]
        theirs = hf_model.generate(ids, attention_mask=torch.ones_like(ids), max_new_tokens=20)[0, ids.shape[1]:].tolist()
        assert max(theirs) < 320 and theirs[:len(mine.token_ids)] == mine.token_ids, (prompt, theirs, mine)
        stopped += mine.finish_reason == "eos" and theirs[len(mine.token_ids):len(mine.token_ids) + 1] == [bos]
    assert stopped  # (the start token ended a completion, on both sides)


def test_import_refuses_weights_that_do_not_fit_config_json(cli, tmp_path, tokenizer_dir):
    import json

    from transformers import GPT2Config

    src = tmp_path / "edited"
    _save_hf_model(src, GPT2Config(vocab_size=320, n_positions=16, n_embd=32, n_layer=1, n_head=2, n_inner=64), tokenizer_dir)
    config = json.loads((src / "config.json").read_text())
    (src / "config.json").write_text(json.dumps(dict(config, n_inner=96)))  # the MLP the weights do not have
    message = _error(cli("import", src, "-o", tmp_path / "out"))
    assert "has shape" in message and "config.json" in message and "do not belong together" in message
    assert not (tmp_path / "out").exists()
    # a Llama's k and v (gate and up) split otherwise than config.json says, with the right total: llmkit joins each
    # pair into one tensor, whose shape passed, and imported a model transformers refuses
    from safetensors.torch import load_file, save_file
    from tokenizers import Tokenizer

    vocab = Tokenizer.from_file(str(tokenizer_dir / "tokenizer.json")).get_vocab_size()
    for first, second, rows in (("self_attn.k_proj", "self_attn.v_proj", 16), ("mlp.gate_proj", "mlp.up_proj", 28)):
        llama = tmp_path / f"llama-{second}"
        _save_hf_model(llama, _hf_configs(vocab)["llama-gqa"], tokenizer_dir)
        weights = load_file(str(llama / "model.safetensors"))
        for layer in range(2):
            a, b = f"model.layers.{layer}.{first}.weight", f"model.layers.{layer}.{second}.weight"
            joined = torch.cat([weights[a], weights[b]])
            weights[a], weights[b] = joined[: weights[a].shape[0] + rows].clone(), joined[weights[a].shape[0] + rows :].clone()
        save_file(weights, str(llama / "model.safetensors"), metadata={"format": "pt"})
        message = _error(cli("import", llama, "-o", tmp_path / "out"))
        assert f"model.layers.0.{first}.weight has shape" in message and "do not belong together" in message, message
        assert not (tmp_path / "out").exists()
    # the columns split otherwise (an unexpected RuntimeError joining them), or a scalar (an IndexError)
    for k_weight in (torch.zeros(32, 72), torch.zeros(())):
        weights = load_file(str(llama / "model.safetensors"))
        weights["model.layers.0.self_attn.k_proj.weight"] = k_weight
        save_file(weights, str(llama / "model.safetensors"), metadata={"format": "pt"})
        message = _error(cli("import", llama, "-o", tmp_path / "out"))
        assert f"k_proj.weight has shape {tuple(k_weight.shape)} but config.json makes (32, 64)" in message, message
    (src / "config.json").write_text(json.dumps(dict(config, n_inner=0)))  # (pretrain's --mlp-ratio was named)
    message = _error(cli("import", src, "-o", tmp_path / "out"))
    assert "config.json gives the MLP 0 hidden units (n_inner or intermediate_size); correct it" in message, message
    # a key of the shape left out: transformers filled in GPT-2 small's 12 layers, and the weights were blamed
    (src / "config.json").write_text(json.dumps({k: v for k, v in config.items() if k != "n_layer"}))
    message = _error(cli("import", src, "-o", tmp_path / "out"))
    assert "config.json lacks n_layer, part of the model's shape" in message, message
    # fewer layers in config.json than in the weights: the config is named (it said "not supported", a variant)
    deeper = tmp_path / "deeper"
    _save_hf_model(deeper, GPT2Config(vocab_size=320, n_positions=16, n_embd=32, n_layer=3, n_head=2, n_inner=64), tokenizer_dir)
    (deeper / "config.json").write_text(json.dumps(dict(json.loads((deeper / "config.json").read_text()), n_layer=1)))
    message = _error(cli("import", deeper, "-o", tmp_path / "out"))
    assert "config.json says 1 layer(s) (n_layer / num_hidden_layers), but the weights hold 3" in message, message
    assert "correct config.json, or re-save the model" in message, message
    assert not (tmp_path / "out").exists()


def test_import_refuses_pickle_weights(cli, tmp_path, tokenizer_dir):
    from transformers import GPT2Config

    src = tmp_path / "pickled"
    src.mkdir()
    GPT2Config(vocab_size=320, n_embd=32, n_layer=1, n_head=2).save_pretrained(src)
    # a pickle that, once loaded, would leave a file behind (what an untrusted one could do instead)
    import pickle

    marker = tmp_path / "unpickled"

    class LeavesAMark:
        def __reduce__(self):
            return (Path.touch, (marker,))

    (src / "pytorch_model.bin").write_bytes(pickle.dumps({"transformer.wte.weight": LeavesAMark()}))
    message = _error(cli("import", src, "-o", tmp_path / "out"))
    assert "pytorch_model.bin" in message and "safetensors" in message
    assert not (tmp_path / "out").exists() and not marker.exists()
    pickle.loads((src / "pytorch_model.bin").read_bytes())  # (the file does what it says when unpickled)
    assert marker.exists()


@pytest.mark.parametrize(
    "change, named",
    [
        ({"rope_parameters": {"rope_type": "llama3", "rope_theta": 500000.0, "factor": 8.0, "low_freq_factor": 1.0,
                              "high_freq_factor": 4.0, "original_max_position_embeddings": 32}}, "llama3"),
        ({"hidden_act": "gelu"}, "hidden_act"),
        ({"head_dim": 32}, "head_dim"),
        ({"sliding_window": 16}, "sliding_window"),
        ({"attention_chunk_size": 8}, "attention_chunk_size"),
        ({"partial_rotary_factor": 0.5}, "partial_rotary_factor"),
        # a transformers-4 config's scaling key, beside a top-level theta: scaled RoPE read as plain would be wrong quietly
        ({"rope_scaling": {"type": "linear", "factor": 2.0}, "rope_theta": 10000.0}, "linear"),
    ],
)
def test_import_refuses_llama_features_llmkit_cannot_express(cli, tmp_path, tokenizer_dir, change, named):
    from tokenizers import Tokenizer

    vocab = Tokenizer.from_file(str(tokenizer_dir / "tokenizer.json")).get_vocab_size()
    src = tmp_path / "hf"
    _save_hf_model(src, _hf_configs(vocab)["llama-gqa"], tokenizer_dir)
    config = json.loads((src / "config.json").read_text())
    config.update(change)
    (src / "config.json").write_text(json.dumps(config))
    message = _error(cli("import", src, "-o", tmp_path / "out"))
    assert "llama" in message and named in message
    assert not (tmp_path / "out").exists()


def test_import_names_what_is_wrong_with_a_folder_and_leaves_no_folder_made_for_it(cli, tmp_path, tokenizer_dir):
    """A classifier was called an incomplete folder; a missing bias became zeros; a rope_theta that
    is no number, and heads that do not divide, were 'not supported' by llmkit or no one-line error;
    and each failure left the folders made above -o."""
    from tokenizers import Tokenizer

    vocab = Tokenizer.from_file(str(tokenizer_dir / "tokenizer.json")).get_vocab_size()
    src = tmp_path / "hf"
    _save_hf_model(src, _hf_configs(vocab)["llama-gqa"], tokenizer_dir)
    config = json.loads((src / "config.json").read_text())

    def refused(change: dict) -> str:
        (src / "config.json").write_text(json.dumps({**config, **change}))
        line = _error(cli("import", src, "-o", tmp_path / "made" / "deeper" / "out"))
        assert not (tmp_path / "made").exists()
        return line

    assert "architectures is LlamaForSequenceClassification, a model with a task head" in refused(
        {"architectures": ["LlamaForSequenceClassification"]})
    # written as a string by hand: one class name (it was read letter by letter, and the classifier passed)
    assert "architectures is LlamaForSequenceClassification, a model with a task head" in refused(
        {"architectures": "LlamaForSequenceClassification"})
    # no model_type: that is said, with the one its class implies (it was "unsupported architecture: model_type None")
    assert 'config.json has no model_type (architectures: LlamaForCausalLM); add "model_type": "llama" to it' in refused(
        {"model_type": None})
    assert "a model with a task head" in refused({"model_type": None, "architectures": ["LlamaForSequenceClassification"]})
    # a size that is not positive is said as such (a negative width was an unsupported head size)
    assert "gives hidden_size -64, where a model's sizes are positive" in refused({"hidden_size": -64})
    assert "rope_theta must be a positive number, got 'abc'" in refused(
        {"rope_parameters": {"rope_type": "default", "rope_theta": "abc"}})
    line = refused({"num_key_value_heads": 3})
    assert "the llama config.json is invalid: n_head (4) must be divisible by n_kv_head (3)" in line
    assert "not supported" not in line

    from safetensors.torch import load_file, save_file

    _save_hf_model(src, _hf_configs(vocab)["llama-attn-bias-untied"], tokenizer_dir)
    config = json.loads((src / "config.json").read_text())
    state = load_file(str(src / "model.safetensors"))
    del state["model.layers.1.self_attn.o_proj.bias"]
    save_file(state, str(src / "model.safetensors"), metadata={"format": "pt"})
    assert "model.layers.1.self_attn.o_proj.bias" in refused({})


def test_export_refuses_styles_transformers_cannot_run(cli, tmp_path, tokenizer_dir):
    ckpt = make_checkpoint(tmp_path, "mixed", tokenizer_dir, norm="rmsnorm", pos="learned", activation="gelu")
    message = _error(cli("export", ckpt, "-o", tmp_path / "hf"))
    assert "pos=learned" in message and "neither GPT-2" in message
    assert not (tmp_path / "hf").exists()


def test_export_refuses_existing_output_and_unknown_format(cli, tmp_path, tokenizer_dir):
    ckpt = make_checkpoint(tmp_path, "ckpt", tokenizer_dir, **EXPORT_CASES["llama-tied-gqa"])
    (tmp_path / "taken").mkdir()
    assert cli("export", ckpt, "-o", tmp_path / "taken").exit_code == 0  # (an empty folder, made for it: taken)
    assert "--force" in _error(cli("export", ckpt, "-o", tmp_path / "taken"))
    assert "gguf" in _error(cli("export", ckpt, "--format", "gguf", "-o", tmp_path / "hf"))
    assert cli("export", ckpt, "-o", tmp_path / "taken", "--force").exit_code == 0
    assert (tmp_path / "taken" / "config.json").is_file()
    # an export that a transformers fine-tune was saved into (its trainer's checkpoints, a model card, its
    # config): --force deleted all of it without a word; only the export as written is replaced
    (tmp_path / "taken" / "README.md").write_text("my model card")
    (tmp_path / "taken" / "checkpoint-10").mkdir()
    said = _error(cli("export", ckpt, "-o", tmp_path / "taken", "--force"))
    assert "is an llmkit export that now holds files llmkit did not write or has changed since (README.md, checkpoint-10)" in said
    assert (tmp_path / "taken" / "README.md").is_file()
    (tmp_path / "taken" / "README.md").unlink()
    (tmp_path / "taken" / "checkpoint-10").rmdir()
    with open(tmp_path / "taken" / "config.json", "a") as config:
        config.write(" ")
    assert "(config.json)" in _error(cli("export", ckpt, "-o", tmp_path / "taken", "--force"))
    # a git repository made of it (to publish it), and weights saved over its own: each kept, not deleted
    assert cli("export", ckpt, "-o", tmp_path / "again").exit_code == 0
    (tmp_path / "again" / ".git").mkdir()
    assert "(.git)" in _error(cli("export", ckpt, "-o", tmp_path / "again", "--force"))
    (tmp_path / "again" / ".git").rmdir()
    (tmp_path / "again" / ".env").write_text("HF_TOKEN=...")  # (a user's: kept)
    assert "(.env)" in _error(cli("export", ckpt, "-o", tmp_path / "again", "--force"))
    (tmp_path / "again" / ".env").unlink()
    (tmp_path / "again" / ".DS_Store").write_bytes(b"")  # (a file manager's: nobody's work)
    assert cli("export", ckpt, "-o", tmp_path / "again", "--force").exit_code == 0
    weights = tmp_path / "again" / "model.safetensors"
    weights.write_bytes(weights.read_bytes()[:-1] + bytes([weights.read_bytes()[-1] ^ 1]))
    assert "(model.safetensors)" in _error(cli("export", ckpt, "-o", tmp_path / "again", "--force"))


def test_token_byte_lengths_sum_to_text_bytes(tokenizer_dir):
    from tokenizers import Tokenizer

    from llmkit.data.tokenizer import token_byte_lengths

    tok = Tokenizer.from_file(str(tokenizer_dir / "tokenizer.json"))
    lengths = token_byte_lengths(tok)
    assert lengths.shape == (tok.get_vocab_size(),) and lengths[:7].tolist() == [0] * 7
    for text in SAMPLES + [TEXT]:
        assert int(lengths[tok.encode(text).ids].sum()) == len(text.encode("utf-8"))
    # The same table as the tokenizer stage computes for byte-level vocabularies.
    from llmkit.data.tokenizer import compute_token_bytes

    assert np.array_equal(lengths, compute_token_bytes(tok))


# ------------------------------------------------------------------------------------------
# Tokenizers named the way real GPT-2 and Llama directories name their special tokens


def _gpt2_style_tokenizer():
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers

    tok = Tokenizer(models.BPE())
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(
        vocab_size=300, special_tokens=["<|endoftext|>"], initial_alphabet=pre_tokenizers.ByteLevel.alphabet(), show_progress=False
    )
    tok.train_from_iterator(TEXT.splitlines() * 20, trainer)
    return tok, dict(bos_token="<|endoftext|>", eos_token="<|endoftext|>", unk_token="<|endoftext|>")


def _llama_style_tokenizer():
    """SentencePiece-style BPE as in Llama's tokenizer.json: "▁" for spaces, byte fallback."""
    from tokenizers import Tokenizer, decoders, models, normalizers, trainers

    tok = Tokenizer(models.BPE(byte_fallback=True, unk_token="<unk>", fuse_unk=True))
    tok.normalizer = normalizers.Sequence([normalizers.Prepend("▁"), normalizers.Replace(" ", "▁")])
    tok.decoder = decoders.Sequence(
        [decoders.Replace("▁", " "), decoders.ByteFallback(), decoders.Fuse(), decoders.Strip(" ", 1, 0)]
    )
    trainer = trainers.BpeTrainer(vocab_size=300, special_tokens=["<unk>", "<s>", "</s>"], show_progress=False)
    tok.train_from_iterator(TEXT.splitlines() * 20, trainer)
    return tok, dict(bos_token="<s>", eos_token="</s>", unk_token="<unk>")


@pytest.mark.parametrize("style", ["gpt2", "gpt2-vocab-merges", "llama"])
def test_import_with_foreign_special_token_names(cli, tmp_path, style):
    """GPT-2's single `<|endoftext|>` serves as bos, eos and pad; Llama's `<s>`/`</s>` as bos/eos
    (pad = eos). The roles travel in tokenizer/special_tokens.json, which the shared loader reads."""
    from transformers import AutoModelForCausalLM, AutoTokenizer, GPT2Config, LlamaConfig, PreTrainedTokenizerFast

    tok, names = _llama_style_tokenizer() if style == "llama" else _gpt2_style_tokenizer()
    vocab = tok.get_vocab_size()
    if style != "llama":
        hf_config = GPT2Config(vocab_size=vocab, n_positions=64, n_embd=32, n_layer=1, n_head=2)
    else:
        hf_config = LlamaConfig(vocab_size=vocab, hidden_size=32, intermediate_size=64, num_hidden_layers=1,
                                num_attention_heads=2, max_position_embeddings=64)
    hf_config.bos_token_id, hf_config.eos_token_id = tok.token_to_id(names["bos_token"]), tok.token_to_id(names["eos_token"])
    src = tmp_path / "hf"
    torch.manual_seed(0)
    hf_model = AutoModelForCausalLM.from_config(hf_config).eval()
    _perturb(hf_model, 0)
    hf_model.save_pretrained(src)
    if style == "gpt2-vocab-merges":  # the classic GPT-2 folder: no tokenizer.json, no tokenizer_config.json
        tok.model.save(str(src))
    else:
        PreTrainedTokenizerFast(tokenizer_object=tok, **names).save_pretrained(src)

    result = cli("import", src, "-o", tmp_path / "ckpt")
    assert result.exit_code == 0, result.output
    # its tokenizer has no <|user|>/<|assistant|>: the next: line offers a fine-tune the default chat template refuses
    assert f"llmkit finetune {tmp_path / 'ckpt'} --template plain --data DATA.jsonl -o SFT" in " ".join(result.output.split())
    roles = json.loads((tmp_path / "ckpt" / TOKENIZER_DIR / "special_tokens.json").read_text())
    eos = names["eos_token"]
    assert roles == {"bos": names["bos_token"], "eos": eos, "pad": eos}
    loaded = load_checkpoint(tmp_path / "ckpt")
    assert (loaded.tokenizer.bos_id, loaded.tokenizer.eos_id) == (hf_config.bos_token_id, hf_config.eos_token_id)
    assert loaded.tokenizer.pad_id == hf_config.eos_token_id
    idx = _tokens(vocab, seed=5)
    with torch.no_grad():
        assert torch.allclose(loaded.model(idx)[0], hf_model(idx).logits, atol=TOL, rtol=0)
    token_bytes = loaded.tokenizer.token_bytes
    text = "Speak, speak."
    extra = 1 if style == "llama" else 0  # the "▁" Llama's normalizer prepends is a byte of the ids
    assert int(token_bytes[loaded.tokenizer.encode(text)].sum()) == len(text.encode()) + extra

    # And back out: transformers sees the same special tokens and ids.
    assert cli("export", tmp_path / "ckpt", "-o", tmp_path / "again").exit_code == 0
    hf_tok = AutoTokenizer.from_pretrained(tmp_path / "again", local_files_only=True)
    assert (hf_tok.bos_token, hf_tok.eos_token) == (names["bos_token"], eos)
    if style == "llama":  # its unknown piece too (the BPE model's unk_token)
        assert hf_tok.unk_token == "<unk>" and hf_tok.convert_tokens_to_ids("never seen") == tok.token_to_id("<unk>")
    assert hf_tok(text, add_special_tokens=False)["input_ids"] == loaded.tokenizer.encode(text)
    # No role tokens: chat says what to do instead (not finetune's "--template", which chat has not)
    line = _error(cli("chat", tmp_path / "ckpt"))
    assert "which this checkpoint's tokenizer lacks" in line and "llmkit generate --prompt" in line, line
    # A fine-tune's task.json names the tokens this tokenizer has (it said <|bos|>/<|eos|> whatever they were)
    (tmp_path / "sft.jsonl").write_text("".join(json.dumps({"prompt": f"Say {w}.", "response": w}) + "\n"
                                                for w in ("speak", "lord", "king", "night") * 4))
    result = cli("finetune", tmp_path / "ckpt", "--template", "plain", "--data", tmp_path / "sft.jsonl", "--max-steps", "1",
                 "--batch-size", "4", "--val-fraction", "0", "-o", tmp_path / "sft")
    assert result.exit_code == 0, result.output
    template = json.loads((tmp_path / "sft" / "task.json").read_text())["template"]
    assert (template["bos"], template["eos"]) == (names["bos_token"], eos)


# ------------------------------------------------------------------------------------------
# The real pipeline: clean -> tokenizer train -> tokenize -> pretrain -> export -> transformers


@pytest.fixture(scope="module")
def shakespeare_tokens(shared_data, tmp_path_factory) -> Path:
    from typer.testing import CliRunner

    from llmkit.cli import app

    root = tmp_path_factory.mktemp("pipeline")
    text = (shared_data / "tinyshakespeare.txt").read_text(encoding="utf-8")[:200_000]
    (root / "plays.txt").write_text(text, encoding="utf-8")
    runner = CliRunner()
    for args in (
        ["clean", root / "plays.txt", "-o", root / "corpus", "--doc-per", "blank-line"],
        ["tokenizer", "train", root / "corpus", "-o", root / "tok", "--vocab-size", "400"],
        ["tokenize", root / "corpus", "-t", root / "tok", "-o", root / "tokens", "--val-fraction", "0.1"],
    ):
        result = runner.invoke(app, [str(a) for a in args])
        assert result.exit_code == 0, result.output
    return root / "tokens"


@pytest.mark.slow
@pytest.mark.parametrize("style", [["--model", "tiny"], ["--model", "gpt2-tiny", "--n-kv-head", "2"]], ids=["llama", "gpt2"])
def test_pretrained_checkpoint_runs_the_same_in_transformers(cli, tmp_path, shakespeare_tokens, style):
    from transformers import AutoModelForCausalLM, AutoTokenizer

    run = tmp_path / "run"
    result = cli("pretrain", shakespeare_tokens, "-o", run, *style, "--n-layer", "2", "--n-embd", "64", "--n-head", "4",
                 "--seq-len", "64", "--batch-tokens", "1024", "--max-steps", "30", "--lr", "3e-3", "--eval-tokens", "1024")
    assert result.exit_code == 0, result.output
    assert cli("export", run, "--format", "hf", "-o", tmp_path / "hf").exit_code == 0
    hf_model = AutoModelForCausalLM.from_pretrained(tmp_path / "hf", local_files_only=True).eval()
    hf_tok = AutoTokenizer.from_pretrained(tmp_path / "hf", local_files_only=True)
    loaded = load_checkpoint(run)
    prompt = "ROMEO:\nBut soft, what light through yonder window"
    ids = [loaded.tokenizer.bos_id] + loaded.tokenizer.encode(prompt)
    assert hf_tok(prompt, add_special_tokens=False)["input_ids"] == ids[1:]
    x = torch.tensor([ids])
    with torch.no_grad():
        assert torch.allclose(loaded.model(x)[0], hf_model(x).logits, atol=TOL, rtol=0)
        # Greedy continuation: transformers' generate (its own KV cache) vs llmkit's forward.
        theirs = hf_model.generate(x, max_new_tokens=12, do_sample=False, eos_token_id=None, pad_token_id=loaded.tokenizer.pad_id)
        ours = x
        for _ in range(12):
            ours = torch.cat([ours, loaded.model(ours)[0][:, -1].argmax(-1, keepdim=True)], dim=1)
    assert theirs.tolist() == ours.tolist()


def test_every_mlp_width_llmkit_can_build_is_found():
    """Import turns transformers' explicit MLP width into llmkit's mlp_ratio; every width a
    ModelConfig can produce must be found exactly, and others refused by name."""
    from hypothesis import given, settings
    from hypothesis import strategies as st

    from llmkit.errors import UserError
    from llmkit.model.hf_config import config_with_mlp_width

    @settings(max_examples=300, deadline=None)
    @given(heads=st.integers(1, 32), head_dim=st.sampled_from([2, 4, 8, 64, 80, 128]), width=st.integers(1, 20000),
           swiglu=st.booleans())
    def check(heads, head_dim, width, swiglu):
        style = LLAMA_STYLE if swiglu else GPT2_STYLE
        values = dict(style, n_embd=heads * head_dim, n_head=heads, n_kv_head=heads)
        buildable = not swiglu or width < 64 or width % 64 == 0
        if buildable:
            assert config_with_mlp_width(dict(values), width, "llama").mlp_hidden == width
        else:
            with pytest.raises(UserError, match=f"MLP width {width}"):
                config_with_mlp_width(dict(values), width, "llama")

    check()


@pytest.mark.slow
def test_chat_finetuned_checkpoint_chats_the_same_in_transformers(cli, tmp_path, shakespeare_tokens):
    from transformers import AutoModelForCausalLM, AutoTokenizer

    from llmkit.data.templates import encode_chat_prompt

    run = tmp_path / "run"
    result = cli("pretrain", shakespeare_tokens, "-o", run, "--model", "tiny", "--n-layer", "2", "--n-embd", "64",
                 "--n-head", "4", "--seq-len", "64", "--batch-tokens", "1024", "--max-steps", "10", "--eval-tokens", "1024")
    assert result.exit_code == 0, result.output
    rows = [{"messages": [{"role": "user", "content": f"Say {w}."}, {"role": "assistant", "content": f"{w}, {w}."}]}
            for w in ("hello", "speak", "lord", "king", "queen", "night", "day", "sword")]
    (tmp_path / "chat.jsonl").write_text("\n".join(json.dumps(r) for r in rows * 4))
    result = cli("finetune", run, "--data", tmp_path / "chat.jsonl", "-o", tmp_path / "ft", "--max-steps", "3", "--batch-size", "8")
    assert result.exit_code == 0, result.output
    assert cli("export", tmp_path / "ft", "-o", tmp_path / "hf").exit_code == 0

    loaded = load_checkpoint(tmp_path / "ft")
    hf_model = AutoModelForCausalLM.from_pretrained(tmp_path / "hf", local_files_only=True).eval()
    hf_tok = AutoTokenizer.from_pretrained(tmp_path / "hf", local_files_only=True)
    messages = [{"role": "user", "content": "Say night."}]
    ids = list(hf_tok.apply_chat_template(messages, add_generation_prompt=True, tokenize=True, return_dict=False))
    assert ids == encode_chat_prompt(messages, loaded.tokenizer)
    x = torch.tensor([ids])
    with torch.no_grad():
        assert torch.allclose(loaded.model(x)[0], hf_model(x).logits, atol=TOL, rtol=0)


def test_report_shows_the_parameter_count_of_an_imported_checkpoint(cli, tmp_path, tokenizer_dir):
    """Import writes the same typed checkpoint stats as training; an import made before that
    (stats key "parameters") is read too. Stats are not hashed, so the edit keeps the artifact valid."""
    from tokenizers import Tokenizer

    from llmkit import artifacts

    vocab = Tokenizer.from_file(str(tokenizer_dir / "tokenizer.json")).get_vocab_size()
    hf_model = _save_hf_model(tmp_path / "hf", _hf_configs(vocab)["llama-gqa"], tokenizer_dir)
    params = sum(p.numel() for p in hf_model.parameters())
    assert cli("import", tmp_path / "hf", "-o", tmp_path / "ckpt").exit_code == 0
    assert artifacts.load(tmp_path / "ckpt").stats["params"] == params
    report = cli("report", tmp_path / "ckpt")
    assert report.exit_code == 0 and f"{params:,} params" in report.output, report.output
    # inspect shows the model's shape a field a row (one line of JSON cut at 100 characters hid n_layer: a review)
    shown = cli("inspect", tmp_path / "ckpt")
    assert shown.exit_code == 0 and "config.model.n_layer" in shown.output and "config.model.n_kv_head" in shown.output

    manifest = tmp_path / "ckpt" / "manifest.json"
    data = json.loads(manifest.read_text())
    data["stats"] = {"parameters": params, "vocab_size": vocab}
    manifest.write_text(json.dumps(data))
    assert cli("verify", tmp_path / "ckpt").exit_code == 0
    assert f"{params:,} params" in cli("report", tmp_path / "ckpt").output


@pytest.mark.parametrize("start", ["eos", "bos"])
def test_the_document_start_token_survives_export_and_import(cli, tmp_path, tokenizer_dir, start):
    """A model pretrained on `text <|eos|>` documents is scored and prompted after <|eos|>; the
    checkpoint records that, and its exported-then-imported copy must too (not fall back to <|bos|>)."""
    from llmkit.inference.prompts import document_start_id
    from llmkit.model.io import load_checkpoint

    ckpt = make_checkpoint(tmp_path, "ckpt", tokenizer_dir, document_start=start, **EXPORT_CASES["llama-tied-gqa"])
    assert cli("export", ckpt, "-o", tmp_path / "hf").exit_code == 0
    assert cli("import", tmp_path / "hf", "-o", tmp_path / "back").exit_code == 0
    for path in (ckpt, tmp_path / "back"):
        loaded = load_checkpoint(path)
        expected = loaded.tokenizer.eos_id if start == "eos" else loaded.tokenizer.bos_id
        assert document_start_id(loaded.tokenizer, loaded.artifact, loaded.task) == expected
    assert artifacts.load(tmp_path / "back").config["document_start"] == start
    # re-saved by transformers (`save_pretrained` keeps no file of llmkit's): the post-processor export wrote
    # still puts the start before a text, and the import reads it from there (it fell back to <|bos|>)
    from transformers import AutoModelForCausalLM, AutoTokenizer

    AutoModelForCausalLM.from_pretrained(tmp_path / "hf", local_files_only=True).save_pretrained(tmp_path / "resaved")
    theirs = AutoTokenizer.from_pretrained(tmp_path / "hf", local_files_only=True)
    theirs.save_pretrained(tmp_path / "resaved")
    assert not (tmp_path / "resaved" / "llmkit_model_config.json").exists()
    assert cli("import", tmp_path / "resaved", "-o", tmp_path / "resaved-back").exit_code == 0
    loaded = load_checkpoint(tmp_path / "resaved-back")
    assert document_start_id(loaded.tokenizer, loaded.artifact, loaded.task) == theirs("x")["input_ids"][0]
    assert artifacts.load(tmp_path / "resaved-back").config["document_start"] == start  # (the bos recorded as export records it)
    # and it is the same tokenizer and network as the original (the post-processor export gave transformers,
    # and an MLP ratio other than the original's for the same width, made them "another tokenizer", "another network")
    from llmkit.data.tokenizer import same_tokenizer

    assert same_tokenizer(ckpt, tmp_path / "resaved-back")
    averaged = cli("average", ckpt, tmp_path / "resaved-back", "-o", tmp_path / "soup")
    assert averaged.exit_code == 0, averaged.output
    # Stats are not hashed: a start written there (as before 2026-12-02) is not read, or an edit would
    # change every prompt while verify says ok.
    unrecorded = make_checkpoint(tmp_path, "unrecorded", tokenizer_dir, **EXPORT_CASES["llama-tied-gqa"])
    manifest = json.loads((unrecorded / "manifest.json").read_text())
    manifest["stats"]["document_start"] = "eos"
    (unrecorded / "manifest.json").write_text(json.dumps(manifest))
    loaded = load_checkpoint(unrecorded)
    assert artifacts.verify(unrecorded).ok and document_start_id(loaded.tokenizer, loaded.artifact, None) == loaded.tokenizer.bos_id


def test_weights_with_nan_or_beyond_float16_are_named_not_converted(cli, tmp_path, tokenizer_dir):
    """import took a NaN weight without a word (every later stage then blamed itself: eval's "damaged
    checkpoint? llmkit verify checks its files", which passed), and --dtype float16 made a weight
    beyond its range inf, on import and on export."""
    from safetensors.torch import load_file, save_file
    from tokenizers import Tokenizer

    vocab = Tokenizer.from_file(str(tokenizer_dir / "tokenizer.json")).get_vocab_size()
    src = tmp_path / "hf"
    _save_hf_model(src, _hf_configs(vocab)["llama-gqa"], tokenizer_dir)
    weights = load_file(src / "model.safetensors")
    name = "model.layers.1.mlp.up_proj.weight"
    damaged, large = dict(weights), dict(weights)
    damaged[name] = damaged[name].clone()
    damaged[name][3, 5] = float("nan")
    large[name] = large[name].clone()
    large[name][0, 0] = 1e6
    for state, folder in ((damaged, "nan"), (large, "large")):
        shutil.copytree(src, tmp_path / folder)
        save_file(state, tmp_path / folder / "model.safetensors", metadata={"format": "pt"})
    line = _error(cli("import", tmp_path / "nan", "-o", tmp_path / "a"))
    assert f"the weight {name} holds NaN or inf" in line and not (tmp_path / "a").exists()
    line = _error(cli("import", tmp_path / "large", "-o", tmp_path / "b", "--dtype", "float16"))
    assert f"the weight {name} holds values up to 1e+06, beyond float16's range (65504)" in line and "--dtype bfloat16" in line
    assert not (tmp_path / "b").exists()
    assert cli("import", tmp_path / "large", "-o", tmp_path / "c").exit_code == 0  # float32 holds it
    line = _error(cli("export", tmp_path / "c", "-o", tmp_path / "d", "--dtype", "float16"))
    # named as the checkpoint names it (transformers' model.layers.1.mlp.up_proj.weight is half of it)
    assert "the weight blocks.1.mlp.up_proj.weight holds values up to 1e+06, beyond float16's range" in line
    assert not (tmp_path / "d").exists()


def test_import_keeps_the_sampling_generation_config_recommends(cli, tmp_path, tokenizer_dir):
    """Llama 3 Instruct's generation_config.json samples at temperature 0.6, top-p 0.9 (top-k 50 by
    transformers' default): the import dropped it, and generate and chat sampled at llmkit's 0.8.
    Each option not given comes from it, and export writes it back."""
    from tokenizers import Tokenizer

    vocab = Tokenizer.from_file(str(tokenizer_dir / "tokenizer.json")).get_vocab_size()
    src = tmp_path / "hf"
    _save_hf_model(src, _hf_configs(vocab)["llama-attn-bias-untied"], tokenizer_dir)
    (src / "generation_config.json").write_text(json.dumps({"do_sample": True, "temperature": 0.6, "top_p": 0.9}))
    assert cli("import", src, "-o", tmp_path / "ckpt").exit_code == 0
    assert json.loads((tmp_path / "ckpt" / "sampling.json").read_text()) == {
        "greedy": False, "temperature": 0.6, "top_k": 50, "top_p": 0.9, "repetition_penalty": 1.0}

    def made(name, *flags):
        result = cli("generate", tmp_path / "ckpt", "-p", "Speak", "-n", "8", "--seed", "3", *flags, "-o", tmp_path / name)
        assert result.exit_code == 0, result.output
        return " ".join(result.output.split()), json.loads((tmp_path / name).read_text())["completion"]

    said, recommended = made("a.jsonl")
    assert "sampling as" in said and "recommends (its generation_config.json): temperature 0.6, top-k 50, top-p 0.9" in said
    assert recommended == made("b.jsonl", "--temperature", "0.6", "--top-k", "50", "--top-p", "0.9")[1]
    # an option given takes its place alone (transformers' rule); the others stay the model's
    assert made("c.jsonl", "--temperature", "1.5")[1] == made("d.jsonl", "--temperature", "1.5", "--top-k", "50",
                                                               "--top-p", "0.9")[1]
    assert "recommends" not in made("e.jsonl", "--temperature", "0.6", "--top-k", "50", "--top-p", "0.9",
                                    "--repetition-penalty", "1")[0]
    assert "recommends" not in made("f.jsonl", "--greedy")[0]  # (the note named values it did not use)
    assert cli("export", tmp_path / "ckpt", "-o", tmp_path / "again").exit_code == 0
    written = json.loads((tmp_path / "again" / "generation_config.json").read_text())
    assert (written["do_sample"], written["temperature"], written["top_k"], written["top_p"]) == (True, 0.6, 50, 0.9)
    # do_sample false (or left out beside a temperature): greedy, as transformers takes it
    (src / "generation_config.json").write_text(json.dumps({"temperature": 0.7}))
    assert cli("import", src, "-o", tmp_path / "greedy").exit_code == 0
    result = cli("generate", tmp_path / "greedy", "-p", "Speak", "-n", "8", "-o", tmp_path / "g.jsonl")
    assert result.exit_code == 0 and "recommends (its generation_config.json): greedy" in " ".join(result.output.split())
    plain = cli("generate", tmp_path / "greedy", "-p", "Speak", "-n", "8", "--greedy", "-o", tmp_path / "h.jsonl")
    assert plain.exit_code == 0
    assert json.loads((tmp_path / "g.jsonl").read_text())["completion"] == json.loads((tmp_path / "h.jsonl").read_text())["completion"]
    assert json.loads((tmp_path / "greedy" / "sampling.json").read_text()) == {  # (its unused temperature: not kept)
        "greedy": True, "temperature": 1.0, "top_k": None, "top_p": None, "repetition_penalty": 1.0}
    # a value that is no number (NaN, an infinity: JSON readers take both) is none: transformers' default stands
    # (recorded, NaN failed every later generate on an option never typed; an infinite top_k failed the import)
    for odd, top_k in (("odd", "1e400"), ("odder", "1" + "0" * 400)):  # (an infinite float; an integer no float holds)
        (src / "generation_config.json").write_text('{"do_sample": true, "temperature": NaN, "top_k": ' + top_k + ', "top_p": 0.9}')
        assert cli("import", src, "-o", tmp_path / odd).exit_code == 0
        assert json.loads((tmp_path / odd / "sampling.json").read_text()) == {
            "greedy": False, "temperature": 1.0, "top_k": 50, "top_p": 0.9, "repetition_penalty": 1.0}
    assert cli("generate", tmp_path / "odd", "-p", "Speak", "-n", "4", "-o", tmp_path / "o.jsonl").exit_code == 0
    # several samples of a prompt ask for a draw: not the greedy record's N copies of one completion
    drawn = cli("generate", tmp_path / "greedy", "-p", "Speak", "-n", "8", "--num-samples", "3", "-o", tmp_path / "s.jsonl")
    assert drawn.exit_code == 0 and "recommends" not in drawn.output, drawn.output
    assert len({json.loads(line)["completion"] for line in (tmp_path / "s.jsonl").read_text().splitlines()}) > 1
