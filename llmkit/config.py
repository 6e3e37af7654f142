"""Stage configuration: dataclass defaults < config file (TOML/YAML) < flags given on the command line.

Every stage keeps its options in one dataclass (declared with llmkit.options). A recipe may pass `--config FILE`; a file may
hold one table per stage (`[clean]`, `[pretrain]`, ...) or the stage's keys at top level.
The resolved dataclass is what the artifact manifest stores.
"""

from __future__ import annotations

import os
import re
import math
import sys
import types
import typing
from dataclasses import MISSING
from pathlib import Path
from typing import Any, Callable, TypeVar

from llmkit.errors import OptionError, UnusedOptions, UsageError, UserError

if sys.version_info >= (3, 11):
    import tomllib
else:  # pragma: no cover
    import tomli as tomllib

T = TypeVar("T")


# Keys a config file may mistake for options: a stage's inputs (arguments, and --init-from), its output and how
# it treats one, given on the command line only (a file shared by runs would point them all at one place).
_COMMAND_LINE_ONLY = ("input", "inputs", "out", "output", "force", "resume", "init_from", "init-from", "tokens",
                      "checkpoint", "checkpoints", "data", "tokenizer")  # (where one is an option, it is known first)


def _unique_key_loader():
    """yaml's safe loader, refusing a key set twice in one mapping (TOML does; YAML keeps the last)."""
    import yaml

    class Loader(yaml.SafeLoader):
        def construct_mapping(self, node, deep=False):
            seen = set()
            for key_node, _ in node.value:
                if key_node.tag == "tag:yaml.org,2002:merge":  # `<<: *base`: its keys may be set again here, by design
                    continue
                key = self.construct_object(key_node, deep=deep)
                if key in seen:
                    raise yaml.constructor.ConstructorError(None, None, f"{key!r} is set twice", key_node.start_mark)
                seen.add(key)
            return super().construct_mapping(node, deep=deep)

    # YAML 1.2's core schema for numbers and booleans. PyYAML reads YAML 1.1, where `3e-4` (no dot)
    # is a string (and `lr: 3e-4` is how learning rates are written), `seed: 010` is octal 8,
    # `1:30` is 90 (base 60) and `no`, `on`, `y` are booleans: values that changed without a word.
    int_tag, float_tag, bool_tag = (f"tag:yaml.org,2002:{t}" for t in ("int", "float", "bool"))
    Loader.yaml_implicit_resolvers = {first: [(tag, regexp) for tag, regexp in resolvers if tag not in (int_tag, float_tag, bool_tag)]
                                      for first, resolvers in yaml.SafeLoader.yaml_implicit_resolvers.items()}
    Loader.add_implicit_resolver(bool_tag, re.compile(r"^(?:true|True|TRUE|false|False|FALSE)$"), list("tTfF"))
    Loader.add_implicit_resolver(int_tag, re.compile(r"^(?:[-+]?[0-9]+|0o[0-7]+|0x[0-9a-fA-F]+)$"), list("-+0123456789"))
    Loader.add_implicit_resolver(
        float_tag, re.compile(r"^(?:[-+]?(?:\.[0-9]+|[0-9]+(?:\.[0-9]*)?)(?:[eE][-+]?[0-9]+)?|[-+]?\.(?:inf|Inf|INF)|\.(?:nan|NaN|NAN))$"),
        list("-+0123456789."))

    def construct_int(loader, node):
        text = loader.construct_scalar(node)
        return int(text, 0) if text[:2] in ("0o", "0x") else int(text, 10)  # (010 is ten)

    Loader.add_constructor(int_tag, construct_int)
    return Loader


def load_config_file(path: Path | str) -> dict[str, Any]:
    path = Path(path)
    if path.is_dir():
        raise UsageError(f"--config {path} is a folder; pass a .toml or .yaml file")
    if not path.is_file():
        raise UsageError(f"config file not found: {path}; pass an existing .toml or .yaml file")
    from llmkit.jsonl import SNIFF_BYTES, wide_encoding

    raw = path.read_bytes()  # (once: the encoding sniffed and the text decoded from the same bytes)
    if encoding := wide_encoding(raw[:SNIFF_BYTES]):
        raise UsageError(f"config file {path} is {encoding} text; save it as UTF-8 (e.g. iconv -f {encoding.lower()} -t utf-8)")
    try:
        text = raw.decode("utf-8").replace("\r\n", "\n").replace("\r", "\n")  # (line ends as read_text read them)
    except UnicodeDecodeError as exc:
        raise UsageError(f"config file {path} is not UTF-8 (byte {exc.start}); save it as UTF-8") from None
    try:
        suffix = path.suffix.lower()  # (RUN.TOML is a TOML file)
        if suffix == ".toml":
            data = tomllib.loads(text)
        elif suffix in (".yaml", ".yml"):
            import yaml

            data = yaml.load(text, Loader=_unique_key_loader()) or {}
        else:
            raise UsageError(f"config file {path} must end in .toml, .yaml or .yml")
    except (tomllib.TOMLDecodeError, ValueError, RecursionError) as exc:
        raise UsageError(f"config file {path} is not valid: {type(exc).__name__}: {str(exc)[:200]}") from exc
    except Exception as exc:  # yaml.YAMLError and friends
        if isinstance(exc, UserError):
            raise
        raise UsageError(f"config file {path} is not valid: {' '.join(str(exc).split())[:300]}") from exc
    if not isinstance(data, dict):
        raise UsageError(f"config file {path} must hold a table of options")
    return data


def _coerce(value: Any, annotation: Any) -> Any:
    """Light type coercion for values read from config files (TOML/YAML already give most types)."""
    origin = typing.get_origin(annotation)
    args = typing.get_args(annotation)
    if origin in (typing.Union, types.UnionType):
        if value is None:
            return None
        non_none = [a for a in args if a is not type(None)]
        return _coerce(value, non_none[0]) if len(non_none) == 1 else value
    if annotation is float and isinstance(value, int) and not isinstance(value, bool):
        return float(value)
    if annotation is int and isinstance(value, float):  # a whole number written as a float: a token budget's 2e10
        return int(value) if math.isfinite(value) and value.is_integer() else value
    if annotation is Path and isinstance(value, str):
        return Path(value)
    if origin in (list, tuple) and isinstance(value, (list, tuple)):
        # each item as its type says: a file's [1, 1, 1] for a list of floats is [1.0, 1.0, 1.0], as the flag's
        # 1,1,1 is (the recorded config, and so the fingerprint, was another)
        item = args[0] if len(args) == 1 or (len(args) == 2 and args[1] is Ellipsis) else None
        items = [_coerce(v, item) for v in value] if item is not None else list(value)
        return items if origin is list else tuple(items)
    return value


# The tables a config file may hold: one per stage, so that one file can serve a whole recipe.
SECTIONS = ("clean", "tokenizer", "tokenize", "pretrain", "finetune", "generate", "chat", "eval", "export", "import", "sweep",
            "scaling", "scaling-predict", "plot", "average", "plan")


def file_values(file: Path | str | None, section: str | None, *, note: bool = True,
                data: dict[str, Any] | None = None) -> dict[str, Any]:
    """A config file's options for one stage: its `[section]` table, else the top-level keys.

    Tables other than the stages' are refused, as is a table inside a stage's: a misspelt or
    misplaced table would otherwise be ignored without a word. `data`: the file, read already.
    """
    if file is None:
        return {}
    data = load_config_file(file) if data is None else data
    # a YAML stage table with every key commented out (`clean:`) reads as null: an empty table
    data = {k: {} if v is None and k in SECTIONS else v for k, v in data.items()}
    unknown = [k for k, v in data.items() if isinstance(v, dict) and k not in SECTIONS]
    if unknown:
        raise UsageError(f"unknown table [{unknown[0]}] in {file}; a config file holds options at top level or in a "
                        f"table per stage: {', '.join(SECTIONS)}")
    if section and isinstance(data.get(section), dict):
        nested = [k for k, v in data[section].items() if isinstance(v, dict)]
        if nested:
            raise UsageError(f"unknown table [{section}.{nested[0]}] in {file}; options of [{section}] are plain keys")
        loose = [k for k, v in data.items() if not isinstance(v, dict)]
        if loose:  # they would be left out without a word: top-level keys serve a file without the stage's table
            raise UsageError(f"{file} sets {loose[0]} at top level beside a [{section}] table, which this stage reads "
                             f"instead; move it into [{section}]")
        data = data[section]
    elif note and section and data and all(isinstance(v, dict) for v in data.values()):
        # Only other stages' tables ([tokenizer] given to tokenize, one letter apart): the file sets nothing here.
        from llmkit.console import note

        note(f"{file} sets nothing for this stage: it has no [{section}] table (its tables: "
             f"{', '.join(data)}) and no options at top level")
    values: dict[str, Any] = {}
    spelled: dict[str, str] = {}
    for key, value in data.items():
        if isinstance(value, dict):
            continue
        if not isinstance(key, str):  # a YAML key read as a number, a boolean or a date (`1: x`)
            read_as = "a boolean" if isinstance(key, bool) else "a number" if isinstance(key, (int, float)) else f"a {type(key).__name__}"
            raise UsageError(f"{file} has the key {key} (read as {read_as}), which is not an option name; keys are option names such as seed")
        name = key.replace("-", "_")
        if name in spelled:
            raise UsageError(f"{file} sets one option twice, as {spelled[name]} and {key}; keep one")
        values[name], spelled[name] = value, key
    return values


def resolve(
    config_cls: type[T],
    *,
    file: Path | str | None = None,
    section: str | None = None,
    explicit: dict[str, Any] | None = None,
    preset: dict[str, Any] | Callable[[dict[str, Any]], dict[str, Any] | None] | None = None,
) -> T:
    """Build a stage config: its defaults < `preset` < the config file < the flags typed.

    `explicit` holds only the options the user actually typed (see `explicit_params`), so a
    flag left at its default never overrides the config file; `preset` fills only what the
    file leaves open, or picks it from the file's values (clean's `preset` key: the file read once).
    """
    from llmkit.options import flat_options, value_problem

    options = flat_options(config_cls)
    known = {opt.name: opt for opt in options}
    by_key = _names_by_key(options)
    data = load_config_file(file) if file is not None else {}  # (read once: its own table, then the others)
    from_file = file_values(file, section, data=_with_the_table_it_plans(config_cls, file, section, data, by_key))
    unknown = sorted(set(from_file) - set(by_key))
    if unknown:
        from llmkit.errors import did_you_mean

        hint = ("the inputs, -o and --force/--resume are given on the command line; " if unknown[0] in _COMMAND_LINE_ONLY
                else did_you_mean(unknown[0], sorted(by_key), cutoff=0.7, shown=str))
        raise UsageError(f"unknown option(s) in {file}: {', '.join(unknown)}; {hint}known options are: "
                         f"{', '.join(sorted(o.key for o in options))}")
    check_other_tables(file, section, data)  # (after the stage's own table: its errors first)
    given: dict[str, list[str]] = {}
    for key in from_file:
        given.setdefault(by_key[key], []).append(key)
    twice = next((keys for keys in given.values() if len(keys) > 1), None)
    if twice:
        raise UsageError(f"{file} sets one option twice, as {' and '.join(twice)}; keep one")
    from_file = {by_key[k]: v for k, v in from_file.items()}
    if callable(preset):
        preset = preset(from_file)
    values = {k: v for k, v in (preset or {}).items() if k not in from_file}
    values.update({k: _coerce(_parse_list_text(v, known[k], file), known[k].type) for k, v in from_file.items()})
    _note_written_escapes(file, {k: values[k] for k in from_file if k not in (explicit or {})}, known)
    for name in [opt.name for opt in options if opt.name in from_file]:
        # the file's value checked here, to name the file (and where a flag typed over it: still checked)
        problem = value_problem(known[name], values[name])
        if problem and name in (explicit or {}):
            raise OptionError(f"{file}: {problem} (a typed {known[name].flag} overrides it here, not in other commands)")
        if problem:
            raise OptionError(f"{file}: {problem}")
    for pair in getattr(config_cls, "EITHER_OR", ()):  # options that stand for one another: the typed one wins
        if any(name in (explicit or {}) for name in pair):
            for name in pair:
                if name not in (explicit or {}):
                    values.pop(name, None)
        elif all(from_file.get(name) is not None for name in pair):  # (a sweep's configs/RUN.yaml holds max_steps: null)
            raise UsageError(f"{file} sets both {' and '.join(known[name].flag for name in pair)}, which stand for one "
                             "another; keep one")
    dropped = []
    for name, names in getattr(config_cls, "STANDS_FOR", {}).items():  # (plan's --hf-config for the model flags): the typed side wins
        typed_names = (explicit or {}).keys()
        for other in (names - typed_names if name in typed_names else {name} if names & typed_names else ()):
            if values.pop(other, None) is not None and other in from_file:
                dropped.append(other)
    if dropped:  # (said: a typed --context-length dropped the file's hf_config, and a default model was planned unsaid)
        from llmkit.console import note

        note(f"{file}: {', '.join(known[name].key for name in sorted(dropped))} left out: what you typed stands in for "
             f"{'it' if len(dropped) == 1 else 'them'}")
    typed = {k: v for k, v in (explicit or {}).items() if k in known}
    for name in values.keys() & from_file.keys() - typed.keys():  # (text in a file: a lone surrogate there is an escape)
        values[name] = _joined_pairs(values[name])
    values.update(typed)
    for name, value in values.items():
        _refuse_non_utf8(known[name].flag, value, file=file if name in from_file and name not in typed else None)
    missing = [opt for opt in options if opt.default is MISSING and opt.name not in values]
    if missing:
        raise UsageError(f"missing option {missing[0].flag}: type it, or set {missing[0].key} in a --config file")
    # a check across options names flags; where a file gave some of them, say so (not typed, they were not to be found)
    read_from = "" if not from_file else f" (options read from {file}{' and the command line' if typed else ''})"
    try:
        return config_cls.build(**values)
    except UnusedOptions as exc:
        raise exc.naming(file, {known[name].flag for name in from_file if name not in (explicit or {})}) from exc
    except UsageError as exc:
        if read_from and read_from not in str(exc):
            raise UsageError(f"{exc}{read_from}") from exc
        raise
    except UserError as exc:  # a stage's own check of its options' values (a vocabulary too small): a usage error
        raise UsageError(f"{exc}{read_from}") from exc
    except ValueError as exc:  # a config's own check across its options: worded for the user, as a UsageError's
        raise UsageError(f"{exc}{read_from}") from exc
    except TypeError as exc:
        raise UsageError(f"invalid configuration: {exc}{read_from}") from exc


def _with_the_table_it_plans(config_cls: type, file, section: str | None, data: dict[str, Any], by_key: dict[str, str]) -> dict[str, Any]:
    """`data` with the options this stage shares with the stage the config plans (plan's PLANS =
    "pretrain": a run's own file) read from that stage's table, beneath the stage's own options
    (its table, else the file's top-level keys), which win; the others are said, in a note, to be
    that stage's alone: the plan of the run the file describes. That table is checked first, as
    that stage checks it."""
    planned = getattr(config_cls, "PLANS", None)
    if not planned or not section or not isinstance(data, dict) or not isinstance(data.get(planned), dict) or not data[planned]:
        return data
    check_other_tables(file, section, data)  # (an unknown key of it named as such, not as one the stage "reads")
    own = data[section] if isinstance(data.get(section), dict) else {k: v for k, v in data.items() if not isinstance(v, dict)}
    table = data[planned]
    shared = {key: value for key, value in table.items() if str(key).replace("-", "_") in by_key}
    others = sorted(str(key) for key in table if key not in shared)
    # the stage's own value wins: the same option however spelt, and what one of its options stands in for (plan's
    # --hf-config for --model and the model flags, its --nproc for --gpus): a review found such files refused
    given = {by_key[str(key).replace("-", "_")] for key in own if str(key).replace("-", "_") in by_key}
    replaced = set().union(*(names for name, names in getattr(config_cls, "STANDS_FOR", {}).items() if name in given))
    shared = {key: value for key, value in shared.items() if by_key[str(key).replace("-", "_")] not in given | replaced}
    from llmkit.console import note

    beneath = f", beneath its [{section}] options" if own else ""
    note(f"{file}: its [{planned}] table is read{beneath}"
         + (f", but for {', '.join(others)}, which {planned} alone reads" if others else ""))
    tables = {key: value for key, value in data.items() if isinstance(value, dict) and key not in (planned, section)}
    return {**tables, section: {**shared, **own}}


# A table's stage command where the two are not spelt alike (the command's `section` says which table it reads).
_COMMAND_OF_SECTION = {"tokenizer": "tokenizer train", "scaling": "scaling fit", "scaling-predict": "scaling predict"}


def check_other_tables(file: Path | str | None, section: str | None, data: dict[str, Any]) -> None:
    """A key no option has in another stage's table of the file (`data`, as read) is named now, not
    when that stage runs (a recipe's shared file: hours into it); its own table is `resolve`'s to check."""
    if file is None or section is None:
        return
    others = {name: table for name, table in data.items()
              if name in SECTIONS and name != section and isinstance(table, dict) and table}
    if not others:
        return
    from llmkit.cli import stage_commands  # (those stages' options only: a command imports only its own stage)
    from llmkit.errors import did_you_mean
    from llmkit.options import flat_options

    paths = {_COMMAND_OF_SECTION.get(name, name) for name in others}
    classes = {command.section: command.config_cls for command in stage_commands(paths).values()}
    for name, table in others.items():
        if name not in classes:
            continue
        known = _names_by_key(flat_options(classes[name]))
        unknown = sorted(str(key) for key, value in table.items()
                         if not isinstance(value, dict) and str(key).replace("-", "_") not in known)
        if unknown:
            hint = did_you_mean(unknown[0], sorted(known), cutoff=0.7, shown=str)
            raise UsageError(f"unknown option(s) in the [{name}] table of {file}: {', '.join(unknown)}; {hint}that stage "
                             "would refuse the file when it runs")


def _names_by_key(options: list[Any]) -> dict[str, str]:
    """A file's key is the flag's name (`prompt`, `metric`); the field's name is also taken unless
    it is another option's flag (`prompts` is --prompts FILE, not --prompt's field)."""
    by_key = {opt.key: opt.name for opt in options}
    by_key.update({opt.name: opt.name for opt in options if opt.name not in by_key})
    return by_key


def flags_from_file(config_cls: type, file: Path | str | None, section: str | None, typed: dict[str, Any]) -> set[str]:
    """The flags of the options whose value came from `file` (set there and not typed over)."""
    from llmkit.options import flat_options

    options = flat_options(config_cls)
    by_key, flags = _names_by_key(options), {opt.name: opt.flag for opt in options}
    return {flags[by_key[key]] for key in file_values(file, section, note=False) if key in by_key and by_key[key] not in typed}


def _joined_pairs(value: Any) -> Any:
    """A config file's text with its escaped surrogate pairs joined: YAML reads "\\ud83d\\ude00" as two
    lone surrogates, not the one character they encode (JSON and TOML join or refuse them)."""
    if isinstance(value, str):
        return value.encode("utf-16-le", "surrogatepass").decode("utf-16-le", "surrogatepass")
    if isinstance(value, list):
        return [_joined_pairs(item) for item in value]
    return value


def _refuse_non_utf8(flag: str, value: Any, file: Path | str | None = None) -> None:
    """Text the manifest will hold must be UTF-8: a value typed in another encoding (or a file name
    that is not UTF-8) reaches Python with surrogates no encoder takes, and failed the stage only
    when it wrote its manifest, after all the work. From a config `file` such a value is an escape
    (YAML's "\\udc80"), named as one."""
    several = isinstance(value, (list, tuple))
    for number, item in enumerate(value if several else [value], 1):
        if isinstance(item, (str, Path)):
            text = str(item)
            try:
                text.encode("utf-8")
            except UnicodeEncodeError as error:
                from llmkit.artifacts import storable_name

                if file is not None:
                    escape = ascii(text[error.start])[1:-1]
                    raise UsageError(f"{file}: {flag}{f' value {number}' if several else ''} holds a lone surrogate "
                                     f"({escape}), which is no text; a \\ud800-\\udfff escape must be half of a pair") from None

                which = f"{flag} value {number} ({storable_name(text)})" if several else f"{flag} {storable_name(text)}"
                named_file = isinstance(item, Path) or os.path.lexists(text)
                fix = "rename the file to a name in UTF-8" if named_file else "give it in UTF-8"
                raise UsageError(f"{which} is not valid Unicode text (not UTF-8); {fix}") from None


def _note_written_escapes(file: Path | str | None, values: dict[str, Any], known: dict[str, Any]) -> None:
    """A file's text is taken as written, where a typed `\\n` is a newline: a `\\n` left in a file's stop
    string (TOML's and YAML's single quotes) is said, as such a stop string never matches. (Not a prompt's:
    a Windows path, C:\\new, is text; a flag typed over the file's value is what runs.)"""
    stops = values.get("stop") or []
    if any("\\n" in str(item) for item in (stops if isinstance(stops, (list, tuple)) else [stops])):
        from llmkit.console import note

        note(f"{known['stop'].key} in {file} holds a backslash and n, taken as written (a newline in a file is the "
             "file's own \"\\n\", in double quotes)")


def _parse_list_text(value: Any, opt: Any, file: Path | str | None) -> Any:
    """A list option written in a file as one text reads as that flag typed once: a comma-separated
    option's items ("1x16,1x24"), a repeatable one's single item (`prompt = "Once upon"`); so does
    one number (`tokens: 8e3`, `flops = 1e15`); an empty list reads as the flag given nothing."""
    if opt.spec.parse is None or typing.get_origin(opt.type) not in (list, tuple):
        return value
    from llmkit.options import stop_strings, unescape_each

    if isinstance(value, str) and opt.spec.parse in (unescape_each, stop_strings):
        # text taken as the file writes it, as a list's items and a text option's value are (a newline is TOML's or
        # YAML's double-quoted "\n"): `stop: '\n'` became a newline where `stop: ['\n']` stayed a backslash and n
        return [value]
    items = typing.get_args(opt.type)
    if isinstance(value, (int, float)) and not isinstance(value, bool) and items and items[0] in (int, float):
        value = repr(value)  # (a number for a list of text stays refused: "1000.0" is not what was written)
    empty = isinstance(value, (list, tuple)) and not value  # the flag given nothing (`--sizes ''`), which a parser may refuse
    if not isinstance(value, str) and not empty:
        return value
    try:
        return opt.spec.parse([] if empty else [value])  # what the command line hands a parser: the values of the flag
    except ValueError as exc:
        raise UsageError(f"{opt.key} {value!r} in {file}: {exc}") from None


def explicit_params(ctx: Any) -> dict[str, Any]:
    """The parameters of a click/typer context that the user set (command line or env var).

    Compared by name: recent typer releases bundle their own click, whose ParameterSource enum
    is not the `click` package's.
    """
    given = {}
    for name, value in ctx.params.items():
        source = ctx.get_parameter_source(name)
        if source is not None and getattr(source, "name", "") not in ("DEFAULT", "DEFAULT_MAP"):
            given[name] = value
    return given
