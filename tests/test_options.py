"""Each option is declared once, on its config field: the command line, config files, docs and
the recorded config all derive from it, and stay consistent."""

from __future__ import annotations

import dataclasses
import json
from pathlib import Path

import pytest
import typer
from typer.testing import CliRunner

from conftest import REPO
from llmkit.cli import app, stage_commands
from llmkit.errors import UserError
from llmkit.help_format import computed_default
from llmkit.options import Options, flat_options, group, option
from llmkit.options_doc import click_command, stale_pages

STANDARD = {"out", "config", "force", "resume", "help"}
GOLDEN = json.loads((REPO / "tests" / "golden" / "quickstart_tiny.json").read_text(encoding="utf-8"))["artifacts"]


def _flag(name: str) -> str:
    return "--" + name.replace("_", "-")


def _all_commands(command=None, path=()):
    """(path, click command) for every command of the app, groups included."""
    command = command or typer.main.get_command(app)
    yield path, command
    for name, sub in getattr(command, "commands", {}).items():
        yield from _all_commands(sub, path + (name,))


@pytest.mark.parametrize("path", list(stage_commands()))
def test_every_config_field_is_exactly_one_flag_and_every_flag_a_field(path):
    function = stage_commands()[path]
    options = {opt.name: opt for opt in flat_options(function.config_cls)}
    inputs = {arg.name for arg in function.arguments}
    params = [p for p in click_command(path).params]
    by_name = {}
    for param in params:
        assert param.name not in by_name, f"{path}: {param.name} declared twice"
        by_name[param.name] = param
    for name, opt in options.items():
        assert name in by_name, f"{path}: field {name} has no flag"
        flags = {*by_name[name].opts, *by_name[name].secondary_opts}
        declared = {f for decl in opt.spec.flags for f in decl.split("/")} or {_flag(name)}
        assert declared <= flags, (path, name, flags)
    extra = set(by_name) - set(options) - inputs - STANDARD
    assert not extra, f"{path}: flags without a config field: {extra}"
    assert "config" in by_name and ("force" in by_name or "out" not in by_name)  # --force wherever something is written


@pytest.mark.parametrize("path", list(stage_commands()))
def test_every_switch_has_an_off_flag_so_a_typed_flag_beats_a_config_files_on(path):
    """`greedy = true` in a config file could not be turned off from the command line (there was no
    --no-greedy), though typed flags beat the file."""
    params = {p.name: p for p in click_command(path).params}
    for opt in flat_options(stage_commands()[path].config_cls):
        if opt.type is bool or opt.type == (bool | None):
            assert params[opt.name].secondary_opts, f"{path}: {opt.flag} has no --no- form"


def test_a_typed_off_flag_beats_a_config_files_on(cli, tmp_path):
    (tmp_path / "c.toml").write_text("[clean]\nkeep_rejects = true\n")
    (tmp_path / "book.txt").write_text("A line of text to keep here.\n", encoding="utf-8")
    assert cli("clean", tmp_path / "book.txt", "--config", tmp_path / "c.toml", "-o", tmp_path / "on").exit_code == 0
    assert cli("clean", tmp_path / "book.txt", "--config", tmp_path / "c.toml", "--no-keep-rejects", "-o", tmp_path / "off").exit_code == 0
    assert (tmp_path / "on" / "rejects.jsonl").exists() and not (tmp_path / "off" / "rejects.jsonl").exists()


@pytest.mark.parametrize("path", list(stage_commands()))
def test_every_option_has_one_config_file_key_its_flag_names(path):
    options = flat_options(stage_commands()[path].config_cls)
    keys = [opt.key for opt in options]
    assert len(keys) == len(set(keys)), f"{path}: two options share a config key"
    for opt in options:
        assert opt.flag == "--" + opt.key.replace("_", "-") and opt.flag in {f for d in opt.spec.flags for f in d.split("/")} | {_flag(opt.name)}


def test_a_config_file_takes_the_flag_names_and_refuses_an_option_given_twice(tmp_path):
    """`--prompt` (texts) and `--prompts` (a file) are different options: a file says which by the
    flag's name, and the field name `prompts` (--prompt's) is not taken for --prompt."""
    from llmkit.config import resolve
    from llmkit.eval.config import EvalConfig
    from llmkit.generate.config import GenerateConfig

    file = tmp_path / "g.toml"
    file.write_text('[generate]\nprompt = ["Once", "Twice"]\nprompts = "p.txt"\nmax_new_tokens = 3\n')
    config = resolve(GenerateConfig, file=file, section="generate")
    assert config.prompts == ["Once", "Twice"] and str(config.prompts_file) == "p.txt" and config.sampling.max_new_tokens == 3
    file.write_text('[generate]\nprompts = ["Once"]\n')  # a list for --prompts FILE: said, not read as texts
    with pytest.raises(UserError, match="--prompts must be a path"):
        resolve(GenerateConfig, file=file, section="generate")
    file.write_text('[eval]\nmetric = ["accuracy"]\nfield = "sentence"\n')
    config = resolve(EvalConfig, file=file, section="eval")
    assert config.metrics == ["accuracy"] and config.text_field == "sentence"
    file.write_text('[eval]\nmetric = ["accuracy"]\nmetrics = ["f1"]\n')
    with pytest.raises(UserError, match="sets one option twice, as metric and metrics"):
        resolve(EvalConfig, file=file, section="eval")
    file.write_text('[eval]\nlabel_field = "a"\nlabel-field = "b"\n')  # one key, spelled two ways
    with pytest.raises(UserError, match="sets one option twice, as label_field and label-field"):
        resolve(EvalConfig, file=file, section="eval")


def test_a_whole_number_written_as_a_float_is_that_whole_number_and_inputs_are_named(tmp_path):
    """A token budget's 2e10: TOML and YAML (1.2's numbers) read 2.048e3 and 2e3 as floats, which were
    refused as "must be a whole number, got 2048.0"; the same config as the integer typed. An input
    given in a file (init_from) is said to belong on the command line."""
    from llmkit.config import resolve
    from llmkit.pretrain.config import PretrainConfig

    configs = []
    for name, text in (("a.toml", "[pretrain]\nmax_tokens = 2048\n"), ("b.toml", "[pretrain]\nmax_tokens = 2.048e3\n"),
                       ("c.yaml", "pretrain:\n  max_tokens: 2e3\n"), ("d.yaml", "pretrain:\n  max_tokens: 2.048e+3\n")):
        (tmp_path / name).write_text(text)
        configs.append(resolve(PretrainConfig, file=tmp_path / name, section="pretrain"))
    assert configs[0].max_tokens == 2048 and isinstance(configs[0].max_tokens, int)
    assert configs[1].hashed() == configs[0].hashed() and configs[3].hashed() == configs[0].hashed()
    assert configs[2].max_tokens == 2000 and isinstance(configs[2].max_tokens, int)
    (tmp_path / "e.toml").write_text("[pretrain]\nmax_tokens = 2048.5\n")
    with pytest.raises(UserError, match="--max-tokens must be a whole number, got 2048.5"):
        resolve(PretrainConfig, file=tmp_path / "e.toml", section="pretrain")
    # text is refused, as the flag refuses it (a first version took " 12 " and "+12", and read "9007199254740993"
    # through a float, one less)
    for text in (" 12 ", "+12", "1_000", "9007199254740993", "2e3"):
        (tmp_path / "g.toml").write_text(f'[pretrain]\nmax_tokens = "{text}"\n')
        with pytest.raises(UserError, match="--max-tokens must be a whole number"):
            resolve(PretrainConfig, file=tmp_path / "g.toml", section="pretrain")
    (tmp_path / "f.toml").write_text('[pretrain]\ninit_from = "run"\n')
    with pytest.raises(UserError, match="unknown option.*init_from; the inputs, -o and --force/--resume are given on the command"):
        resolve(PretrainConfig, file=tmp_path / "f.toml", section="pretrain")


def test_a_list_option_reads_its_flags_comma_text_from_a_config_file(tmp_path, capsys):
    from llmkit.config import resolve
    from llmkit.sweep.config import SweepConfig

    file = tmp_path / "s.toml"
    file.write_text('[sweep]\nflops = "1e5,1e6"\nsizes = "1x16,1x24"\n')
    from_text = resolve(SweepConfig, file=file, section="sweep")
    file.write_text('[sweep]\nflops = [1e5, 1e6]\nsizes = ["1x16", "1x24"]\n')
    assert from_text == resolve(SweepConfig, file=file, section="sweep")
    assert from_text.sizes == ["1x16", "1x24"] and from_text.flops == [1e5, 1e6]
    file.write_text('[sweep]\nflops = "1e5,lots"\n')
    with pytest.raises(UserError, match="flops '1e5,lots' in .*s.toml"):
        resolve(SweepConfig, file=file, section="sweep")
    # a repeatable option's text is one item, as the flag typed once: not one per character
    from llmkit.eval.config import EvalConfig
    from llmkit.generate.config import GenerateConfig

    file.write_text('[generate]\nprompt = "Once upon"\nstop = "END"\n')
    generate = resolve(GenerateConfig, file=file, section="generate")
    assert generate.prompts == ["Once upon"] and generate.sampling.stop == ["END"]
    file.write_text('[eval]\nreferences = "refs.txt"\n')
    assert resolve(EvalConfig, file=file, section="eval").references == ["refs.txt"]
    file.write_text('[generate]\nstop = ""\n')
    with pytest.raises(UserError, match="empty stop string"):
        resolve(GenerateConfig, file=file, section="generate")
    # text as the file writes it, one string or a list's items alike (`stop: '\n'` became a newline where
    # `stop: ['\n']` stayed a backslash and n): a newline is the file's own "\n"
    for written in ("'\\n'", "['\\n']"):
        file.write_text(f"[eval]\nstop = {written}\nprompt_template = '{{source}}\\n'\n")
        literal = resolve(EvalConfig, file=file, section="eval")
        assert literal.stop == ["\\n"] and literal.prompt_template == "{source}\\n", written
        said = capsys.readouterr().err
        assert "stop in" in said and "prompt_template in" not in said  # said: such a stop string never matches
    resolve(EvalConfig, file=file, section="eval", explicit={"stop": ["END"]})  # a typed --stop runs instead: nothing said
    assert "stop in" not in capsys.readouterr().err
    file.write_text('[eval]\nstop = "\\n"\n[generate]\nstop = ["\\n", "END"]\n')
    assert resolve(EvalConfig, file=file, section="eval").stop == ["\n"]
    assert resolve(GenerateConfig, file=file, section="generate").sampling.stop == ["\n", "END"]
    # finetune's comma-separated lists read as their flags do (a text was refused as "must be a list of text")
    from llmkit.finetune.config import FinetuneConfig

    file.write_text('[finetune]\nlora_rank = 4\nlora_targets = "q_proj, kv_proj"\n')
    assert resolve(FinetuneConfig, file=file, section="finetune").lora_targets == ["q_proj", "kv_proj"]
    file.write_text('[finetune]\nfreeze = "embeddings,norms"\n')
    assert resolve(FinetuneConfig, file=file, section="finetune").freeze == ["embeddings", "norms"]


def test_no_short_flag_means_two_things():
    meanings: dict[str, set[str]] = {}
    for _, command in _all_commands():
        for param in getattr(command, "params", []):
            longs = [o for o in param.opts if o.startswith("--")]
            for short in (o for o in param.opts if not o.startswith("--")):
                meanings.setdefault(short, set()).update(longs or [param.name])
    doubles = {short: names for short, names in meanings.items() if len(names) > 1}
    assert not doubles, doubles
    assert meanings["-o"] == {"--out"}


def test_every_stage_takes_seed_where_it_applies():
    without_seed = {"export", "plot", "scaling predict", "plan"}  # nothing random in them
    for path in stage_commands():
        names = {p.name for p in click_command(path).params}
        assert ("seed" in names) != (path in without_seed), path


@pytest.mark.parametrize("width", ["80", "110", "250"])  # (110: plan's --gpu choices took the descriptions' room)
@pytest.mark.parametrize("path", [" ".join(p) for p, _ in _all_commands()])
def test_help_of_every_command_renders_without_lost_text(path, width):
    result = CliRunner().invoke(app, [*path.split(), "--help"], env={"COLUMNS": width, "TERMINAL_WIDTH": width})
    assert result.exit_code == 0, result.output
    assert "<bool>" not in result.output
    # a type is whole on its line: a long choice list folded in its column cut a choice mid-word (interleaved-1f / 1b)
    cut = [token for token in result.output.replace("│", " ").split() if token.startswith("<") and len(token) > 1
           and not token.rstrip(".,;:)]").endswith(">")]
    assert not cut, (path, cut)
    if path in stage_commands():
        function = stage_commands()[path]
        assert f"[{function.section}]" in result.output  # not eaten as rich markup
        shown = [opt for opt in flat_options(function.config_cls) if not opt.hidden]
        for panel in {opt.panel for opt in shown if opt.panel}:
            assert panel in result.output, (path, panel)
        text = " ".join(result.output.replace("│", " ").split())
        assert "…" not in text, path  # no name, type or description cut short
        for opt in shown:
            # (a default the stage computes, "(default X)." closing the help, is shown as [default: X])
            described, computed = computed_default(opt.help) if opt.default is None else (opt.help, None)
            assert " ".join(described.split()[:3]) in text, (path, opt.name)
            assert computed is None or f"[default: {' '.join(computed.split())}]" in text, (path, opt.name)
    if path == "eval":  # a default holding a newline is shown as typed (it broke the line: "[default:" then "]")
        assert "[default: \\n]" in " ".join(result.output.replace("│", " ").split()), result.output


def test_help_at_80_columns_shows_every_option_whole_with_its_description_across_the_width():
    """typer's six-column rows (a --x/--no-x pair widening them) cut names at 80 columns
    (`--no-tie-embedd…`) and wrapped descriptions every ~20 characters: a 260-line pretrain help."""
    from llmkit.help_format import option_names

    command = click_command("pretrain")
    narrow = CliRunner().invoke(app, ["pretrain", "--help"], env={"COLUMNS": "80", "TERMINAL_WIDTH": "80"}).output
    lines = narrow.splitlines()
    assert "…" not in narrow and max(map(len, lines)) <= 80
    assert "Usage: llmkit pretrain [OPTIONS] TOKENS" in narrow
    assert "│ --[no-]tie-embeddings" in narrow and "--no-tie-embeddings" not in narrow
    for param in command.params:
        if getattr(param, "hidden", False):
            continue
        names = option_names(param)
        row = next(i for i, line in enumerate(lines) if line.startswith(f"│ {names}"))
        first_words = " ".join((computed_default(param.help)[0] if param.default is None else param.help).split()[:6])
        assert first_words in lines[row + 1], (names, lines[row + 1])  # on the line below, whole
    wide = CliRunner().invoke(app, ["pretrain", "--help"], env={"COLUMNS": "160", "TERMINAL_WIDTH": "160"}).output
    assert len(wide.splitlines()) < len(lines) * 0.7
    assert any("--[no-]bias" in line and "Biases in linear layers" in line for line in wide.splitlines())  # beside it
    assert any("--[no-]strip-html" in line and "[default: off]" in line
               for line in CliRunner().invoke(app, ["clean", "--help"], env={"TERMINAL_WIDTH": "200"}).output.splitlines())


def test_option_tables_in_docs_are_generated_from_the_declarations():
    assert stale_pages() == [], "option tables in docs/ are stale; run python -m llmkit.options_doc"


def test_recorded_configs_keep_the_keys_fingerprinted_before_the_renovation():
    """The golden manifests' configs (taken before options were declared once) have exactly the keys
    each config class now hashes: the nested groups flatten to the same dict."""
    from llmkit.corpus.config import CleanConfig
    from llmkit.eval.config import EvalConfig
    from llmkit.finetune.config import FinetuneConfig
    from llmkit.tokenizer.config import TokenizeConfig, TokenizerTrainConfig
    from llmkit.pretrain.config import PretrainConfig

    assert set(GOLDEN["pretrain"]["config"]) == set(PretrainConfig().hashed()) | {"document_start"}
    assert set(GOLDEN["corpus"]["config"]) == set(CleanConfig().hashed())
    assert set(GOLDEN["tokens"]["config"]) == set(TokenizeConfig().hashed())
    assert set(GOLDEN["tokenizer"]["config"]) == set(TokenizerTrainConfig().hashed()) | {"input"}
    assert set(GOLDEN["sft"]["config"]) == set(FinetuneConfig().hashed()) | {"data_sha256", "val_data_sha256"}
    assert set(GOLDEN["eval-lm"]["config"]) == set(GOLDEN["eval-sft"]["config"]) == set(EvalConfig().hashed())
    recipe = {k: v for k, v in GOLDEN["pretrain"]["config"].items() if k != "document_start"}
    assert PretrainConfig.build(**recipe).hashed() == recipe


def test_groups_take_stage_defaults_and_flat_names_from_flags_and_files(tmp_path):
    from llmkit.config import resolve
    from llmkit.finetune.config import FinetuneConfig
    from llmkit.pretrain.config import PretrainConfig

    plain_ft, plain_pt = FinetuneConfig(), PretrainConfig()
    assert (plain_ft.optim.weight_decay, plain_ft.optim.beta2, plain_ft.devices.micro_batch) == (0.0, 0.999, 8)
    assert (plain_pt.optim.weight_decay, plain_pt.optim.beta2, plain_pt.devices.micro_batch) == (0.1, 0.95, 16)
    file = tmp_path / "run.toml"
    file.write_text("[finetune]\nlr = 3e-4\nmicro-batch = 4\nlora_rank = 8\n[pretrain]\nlr = 1\n")
    config = resolve(FinetuneConfig, file=file, section="finetune", explicit={"micro_batch": 2, "momentum": 0.5,
                                                                                   "optimizer": "sgd"})
    assert (config.optim.lr, config.devices.micro_batch, config.lora_rank, config.optim.momentum) == (3e-4, 2, 8, 0.5)
    assert config.optim.weight_decay == 0.0  # the group keeps finetune's default for what is not given
    assert FinetuneConfig.build(**config.flat()) == config  # the round trip a torchrun worker makes


def test_choices_are_checked_on_the_command_line_and_in_files(cli, tmp_path):
    result = cli("pretrain", tmp_path, "-o", tmp_path / "run", "--optimizer", "adam")
    assert result.exit_code != 0 and "--optimizer must be one of adamw, sgd, got 'adam'" in result.output
    (tmp_path / "c.toml").write_text('schedule = "exp"\n')
    result = cli("pretrain", tmp_path, "-o", tmp_path / "run", "--config", tmp_path / "c.toml")
    assert result.exit_code != 0 and "--schedule must be one of cosine, linear, constant" in result.output
    assert not (tmp_path / "run").exists()


def test_output_is_a_hidden_alias_of_out(cli, tmp_path):
    text = tmp_path / "a.txt"
    text.write_text("A document long enough to keep.\n\nAnd another one here.\n")
    assert cli("clean", text, "--output", tmp_path / "c1").exit_code == 0
    assert cli("clean", text, f"--output={tmp_path / 'c2'}").exit_code == 0
    assert (tmp_path / "c1" / "manifest.json").is_file() and (tmp_path / "c2" / "manifest.json").is_file()
    assert "--output" not in CliRunner().invoke(app, ["clean", "--help"], env={"COLUMNS": "250"}).output


@dataclasses.dataclass
class _GroupA(Options):
    lr: float = option(1.0, "a")


@dataclasses.dataclass
class _GroupB(Options):
    lr: float = option(2.0, "b")


@dataclasses.dataclass
class _Both(Options):
    a: _GroupA = group(_GroupA)
    b: _GroupB = group(_GroupB)


def test_a_flat_name_in_two_groups_is_refused():
    with pytest.raises(TypeError, match="lr appear"):
        flat_options(_Both)
    with pytest.raises(TypeError, match="recorded_as"):
        option(0, "unrecorded", hashed=False)


def test_the_config_modules_import_neither_torch_nor_numpy():
    """`llmkit --help` stays fast: every command and option is declared without the heavy libraries."""
    import subprocess
    import sys

    code = "import sys, llmkit.cli; print(sorted(m for m in ('torch', 'numpy', 'pyarrow') if m in sys.modules))"
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, cwd=Path(REPO))
    assert proc.returncode == 0 and proc.stdout.strip() == "[]", proc.stdout + proc.stderr


def test_config_file_tables_are_the_stages():
    from llmkit.config import SECTIONS

    assert set(SECTIONS) == {command.section for command in stage_commands().values()}


def test_a_config_file_with_only_other_stages_tables_says_it_sets_nothing_here(tmp_path, capsys):
    """[tokenize] given to `tokenizer train` (one letter apart) was ignored without a word."""
    from llmkit.config import file_values

    (tmp_path / "only.toml").write_text("[tokenize]\nval_fraction = 0.5\n", encoding="utf-8")
    assert file_values(tmp_path / "only.toml", "tokenizer") == {}
    said = " ".join(capsys.readouterr().err.split())
    assert "sets nothing for this stage: it has no [tokenizer] table (its tables: tokenize)" in said, said
    assert file_values(tmp_path / "only.toml", "tokenize") == {"val_fraction": 0.5}
    assert capsys.readouterr().err == ""
    from llmkit.corpus.config import resolve

    resolve(tmp_path / "only.toml")  # (clean reads the file twice, for its preset first: the note once)
    assert capsys.readouterr().err.count("sets nothing for this stage") == 1


def test_minus_zero_is_recorded_as_zero():
    """`--val-fraction=-0.0` computed what 0 does under another fingerprint."""
    from llmkit.tokenizer.config import TokenizeConfig

    assert json.dumps(TokenizeConfig.build(val_fraction=-0.0).hashed()) == json.dumps(TokenizeConfig.build(val_fraction=0.0).hashed())


def test_a_whole_number_from_python_for_a_float_option_is_recorded_as_the_flag_records_it(cli, tmp_path):
    """`build(val_fraction=0)` recorded 0 where `--val-fraction 0` records 0.0: another fingerprint for
    the same work, for every test and script that builds configs in Python."""
    from llmkit.config import resolve
    from llmkit.corpus.config import CleanConfig
    from llmkit.pretrain.config import PretrainConfig
    from llmkit.tokenizer.config import TokenizeConfig

    assert json.dumps(TokenizeConfig.build(val_fraction=0).hashed()) == json.dumps(
        resolve(TokenizeConfig, explicit={"val_fraction": 0.0}).hashed()) and '"val_fraction": 0.0' in json.dumps(
        TokenizeConfig(val_fraction=0).hashed())
    built = PretrainConfig.build(lr=1, weight_decay=0, min_lr_ratio=0)
    assert (repr(built.optim.lr), repr(built.optim.weight_decay), repr(built.optim.min_lr_ratio)) == ("1.0", "0.0", "0.0")
    listed = CleanConfig.build(gopher_repetition=True, max_top_ngram_char_frac=[1, 1, 0.5])
    assert json.dumps(listed.max_top_ngram_char_frac) == "[1.0, 1.0, 0.5]"


def test_config_files_read_numbers_and_booleans_as_yaml_1_2_and_lists_item_by_item(tmp_path):
    """YAML 1.1's readings changed values without a word (`seed: 010` was 8, `1:30` was 90, `no` was
    false); a file's [1, 1, 1] for a list of floats was recorded as integers (another fingerprint than
    the flag's 1,1,1); an empty YAML stage table (`clean:`, its keys commented out) was an unknown option."""
    from llmkit.config import resolve
    from llmkit.corpus.config import CleanConfig
    from llmkit.errors import UsageError

    file = tmp_path / "c.yaml"
    file.write_text("clean:\n  seed: 010\n  min_words: 0x10\n  gopher_quality: true\n")
    config = resolve(CleanConfig, file=file, section="clean")
    assert (config.seed, config.min_words) == (10, 16)
    for text, flag in (("min_words: 1:30", "--min-words"), ("cleanup: no", "--cleanup"), ("cleanup: on", "--cleanup")):
        file.write_text(f"clean:\n  {text}\n")
        with pytest.raises(UsageError, match=f"c.yaml: {flag} must be"):  # the file named, though no flag was typed
            resolve(CleanConfig, file=file, section="clean")
    file.write_text("clean:\n  cleanup: false\n  max_top_ngram_char_frac: [1, 1, 1]\n  min_language_score: 1e-1\n"
                    "  gopher_repetition: true\n  languages: [en]\n")
    config = resolve(CleanConfig, file=file, section="clean")
    assert config.cleanup is False and config.min_language_score == 0.1
    typed = resolve(CleanConfig, explicit={"max_top_ngram_char_frac": [1.0, 1.0, 1.0], "gopher_repetition": True})
    assert json.dumps(config.max_top_ngram_char_frac) == json.dumps(typed.max_top_ngram_char_frac) == "[1.0, 1.0, 1.0]"
    file.write_text("clean:\n")
    assert resolve(CleanConfig, file=file, section="clean") == resolve(CleanConfig)
    file.write_text("1: x\n")  # a key YAML reads as a number: an AttributeError, "unexpected"
    with pytest.raises(UsageError, match=r"has the key 1 \(read as a number\), which is not an option name"):
        resolve(CleanConfig, file=file, section="clean")
    file.write_text("2024-01-01: x\n")  # a date, shown as typed rather than as datetime.date(2024, 1, 1)
    with pytest.raises(UsageError, match=r"has the key 2024-01-01 \(read as a date\)"):
        resolve(CleanConfig, file=file, section="clean")
    # YAML's merge key: shared values set once and one set again (refused as "no constructor" before); a key set
    # twice in one mapping is still refused
    file.write_text("clean:\n  <<: {seed: 7, min_words: 3}\n  min_words: 5\n  gopher_quality: true\n")
    config = resolve(CleanConfig, file=file, section="clean")
    assert (config.seed, config.min_words) == (7, 5)
    file.write_text("clean:\n  seed: 1\n  seed: 2\n")
    with pytest.raises(UsageError, match="set twice"):
        resolve(CleanConfig, file=file, section="clean")
    # a misspelt key is offered the right one; a check across options says the file gave options too (it
    # named flags the user never typed)
    file.write_text("clean:\n  min_word: 3\n")
    with pytest.raises(UsageError, match="unknown option.*min_word; did you mean min_words\\?"):
        resolve(CleanConfig, file=file, section="clean")
    file.write_text("clean:\n  out: c2\n")  # (an output: typed with -o, whatever option it starts)
    with pytest.raises(UsageError, match="unknown option.*out; the inputs, -o and --force/--resume are given on the command line"):
        resolve(CleanConfig, file=file, section="clean")
    from llmkit.sweep.config import SweepConfig

    file.write_text("sweep:\n  n_layer: 3\n  tokens: [10000]\n")
    with pytest.raises(UsageError, match=r"the sweep sets --n-layer.*\(options read from .*c\.yaml\)$"):  # (none typed)
        resolve(SweepConfig, file=file, section="sweep")
    # a misspelt key in another stage's table is named by the first stage that reads the file, not hours later
    file.write_text("clean:\n  min_words: 3\npretrain:\n  max-step: 3\n  lr: 1e-3\n")
    with pytest.raises(UsageError, match=r"unknown option\(s\) in the \[pretrain\] table of .*c.yaml: max-step; did you mean max_steps\?"):
        resolve(CleanConfig, file=file, section="clean")
    file.write_text("clean:\n  seed: 3\npretrain:\n  max-steps: 3\n  lr: 1e-3\n")  # (its own spellings: taken)
    assert resolve(CleanConfig, file=file, section="clean").seed == 3
    file.write_text("sweep:\n  n_layer: 3\n")
    with pytest.raises(UsageError, match=r"the sweep sets --n-layer.*\(options read from .*c\.yaml and the command line\)$"):
        resolve(SweepConfig, file=file, section="sweep", explicit={"token_budgets": [10000.0]})


def test_a_repeated_list_flag_adds_to_the_list_and_a_stages_own_check_is_a_usage_error(cli, tmp_path):
    """`--languages fr --languages en` kept only en (the repeat said nothing); a value a stage's own
    check refuses (a vocabulary too small for its bytes) exited 1 where every bad value exits 2."""
    (tmp_path / "en.txt").write_text("To be, or not to be, that is the question of the day.\n" * 4)
    result = cli("clean", tmp_path / "en.txt", "--languages", "fr", "--languages", "de,en", "--min-language-score", "0",
                 "-o", tmp_path / "c")
    assert result.exit_code == 0, result.output
    assert json.loads((tmp_path / "c" / "manifest.json").read_text())["config"]["languages"] == ["de", "en", "fr"]  # (one set, sorted)
    result = cli("tokenizer", "train", tmp_path / "en.txt", "--vocab-size", "10", "-o", tmp_path / "t")
    assert result.exit_code == 2 and "--vocab-size 10 is too small" in result.output, result.output
    # scaling predict reads its own table: [scaling] holds fit's options, which predict refused as unknown
    (tmp_path / "s.toml").write_text("[scaling]\nbootstrap = 0\n[scaling-predict]\nparams = 1e8\ntokens = 1e9\n")
    result = cli("scaling", "predict", tmp_path / "nothing", "--config", tmp_path / "s.toml")
    assert "no such artifact" in result.output, result.output


def test_an_output_name_too_long_for_its_temporaries_is_refused_first(cli, tmp_path):
    """A name the file system takes (255 bytes) but its lock or `.NAME.partial-KEY` beside it does not
    failed after the checks as an unexpected error naming the temporary."""
    (tmp_path / "en.txt").write_text("a line of text\n")
    result = cli("clean", tmp_path / "en.txt", "-o", tmp_path / ("n" * 240))
    assert result.exit_code == 1 and "is 240 bytes long, and llmkit takes names of up to 229" in " ".join(result.output.split())
    assert cli("clean", tmp_path / "en.txt", "-o", tmp_path / ("n" * 229)).exit_code == 0


def test_an_output_path_too_long_is_refused_first_and_leaves_nothing(cli, tmp_path):
    """A folder name past 255 bytes anywhere in -o, or a whole path near the 4,096 a path holds: the
    first check of the path failed as an "unexpected" OSError, and a long path left its temporary and
    every parent folder it had made (its clean-up asked a question the file system refused), so that
    every rerun failed the same way. Refused before anything is made; an input path too long is named."""
    (tmp_path / "en.txt").write_text("a line of text\n")
    deep = tmp_path.joinpath(*["d" * 200] * 20) / "corpus"
    result = cli("clean", tmp_path / "en.txt", "-o", deep)
    said = " ".join(result.output.split())
    assert result.exit_code == 1 and "bytes long, and llmkit takes paths of up to 3,895" in said, said
    assert not (tmp_path / ("d" * 200)).exists()
    result = cli("clean", tmp_path / "en.txt", "-o", tmp_path / ("z" * 256) / "corpus")
    said = " ".join(result.output.split())
    assert result.exit_code == 1 and "a folder in it has a name of 256 bytes" in said and "unexpected" not in said, said
    result = cli("tokenize", tmp_path / ("z" * 256) / "corpus", "-t", tmp_path / "tok", "-o", tmp_path / "tokens")
    said = " ".join(result.output.split())
    assert result.exit_code == 1 and "a path is too long for the file system" in said and "unexpected" not in said, said
