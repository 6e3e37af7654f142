"""Options are declared once: on the field of a stage's config dataclass.

    @dataclass
    class TokenizeConfig(Options):
        val_fraction: float = option(0.05, "Share of documents held out for validation.")
        workers: int = option(0, "Encoding processes; 0 = one per core.", runtime=True)

Everything else is derived from that field: the Typer option (`llmkit.stage_command`), the
config-file key, the option tables in docs/ (`python -m llmkit.options_doc`), and how the
value is recorded in the artifact manifest:

  hashed   (the default) in the manifest's `config`, which the fingerprint covers
  runtime  how the work ran, not what it computed (workers, devices): the manifest's
           `runtime`, never hashed
  neither  (`hashed=False, recorded_as=...`) recorded another way: the seed as the manifest's
           seed, an input file by its content hash, a data set by what the stage read from it

An option added to a stage whose artifacts are already about (`--document-mask`) is hashed only
where it is set: `hashed_unless=False` leaves it out of `config` at that value, which is what the
stage computed before it existed, so those artifacts keep their fingerprints.

Groups of options that several stages share (the optimizer, checkpointing, devices) are
dataclasses nested in a stage's config with `group(...)`, which also sets the stage's own
defaults for them. Flags, config-file keys and recorded dicts stay flat (`--lr`, `lr = 3e-4`,
`"lr": 0.0003`), so a group can be introduced without changing a flag or a fingerprint; flat
names are therefore unique across a config and its groups.
"""

from __future__ import annotations

import dataclasses
import functools
import math
import types
import typing
from dataclasses import MISSING, dataclass
from pathlib import Path
from typing import Any, Callable, Iterator, TypeVar

from llmkit.errors import OptionError

T = TypeVar("T", bound="Options")

_OPTION = "llmkit.option"
_GROUP = "llmkit.group"


@dataclass(frozen=True)
class Range:
    """An interval of allowed numbers in the usual notation: "[0, 1)", "(0, inf)", "[1, 100]"."""

    low: float
    high: float
    low_closed: bool
    high_closed: bool

    @classmethod
    def parse(cls, text: str) -> Range:
        text = text.strip()
        if text[0] not in "[(" or text[-1] not in "])" or "," not in text:
            raise ValueError(f"a range is written like [0, 1) or (0, inf), got {text!r}")
        low, high = (float(part) for part in text[1:-1].split(","))
        return cls(low, high, text[0] == "[", text[-1] == "]")

    def __contains__(self, value: float) -> bool:
        above = value >= self.low if self.low_closed else value > self.low
        below = value <= self.high if self.high_closed else value < self.high
        return above and below

    def __str__(self) -> str:
        def number(x: float) -> str:
            return "inf" if x == math.inf else "-inf" if x == -math.inf else str(int(x)) if x.is_integer() else str(x)

        return f"{'[' if self.low_closed else '('}{number(self.low)}, {number(self.high)}{']' if self.high_closed else ')'}"

    def describe(self) -> str:
        """In words: "at least 1", "positive", "between 0 and 1"..."""
        if self.high == math.inf:
            if self.low == 0:
                return "at least 0" if self.low_closed else "positive"
            low = str(self).split(",")[0][1:]
            return f"at least {low}" if self.low_closed else f"above {low}"
        return f"in {self}"


HASHED_ALWAYS = object()  # OptionSpec.hashed_unless of an option hashed at every value


@dataclass(frozen=True)
class OptionSpec:
    """What a field's metadata says about its option."""

    help: str
    panel: str | None = None
    flags: tuple[str, ...] = ()  # () = `--field-name` (`--name/--no-name` for a bool defaulting to True)
    runtime: bool = False
    hashed: bool = True
    recorded_as: str | None = None  # with hashed=False: how the manifest records it instead
    hashed_unless: Any = HASHED_ALWAYS  # a value at which it is left out of the hashed config (the module docstring)
    choices: tuple[str, ...] | None = None
    range: Range | None = None  # allowed numbers, e.g. "[0, 1)"; every float must also be finite
    cli_type: Any = None  # the type typed on the command line, when not the field's own
    parse: Callable[[Any], Any] | None = None  # command-line value -> field value


@dataclass(frozen=True)
class GroupSpec:
    """A nested group's stage-specific defaults, help panel and help texts."""

    defaults: dict[str, Any]
    panel: str | None = None
    help: dict[str, str] = dataclasses.field(default_factory=dict)
    hidden: frozenset[str] = frozenset()  # options (at any depth) this stage leaves out of --help and its docs


def option(
    default: Any = MISSING,
    help: str = "",
    *,
    default_factory: Callable[[], Any] | Any = MISSING,
    flags: tuple[str, ...] | list[str] = (),
    panel: str | None = None,
    runtime: bool = False,
    hashed: bool = True,
    recorded_as: str | None = None,
    hashed_unless: Any = HASHED_ALWAYS,
    choices: tuple[str, ...] | list[str] | None = None,
    range: str | None = None,
    cli_type: Any = None,
    parse: Callable[[Any], Any] | None = None,
) -> Any:
    """A dataclass field that is also a command-line option (see the module docstring)."""
    if not hashed and not runtime and not recorded_as:
        raise TypeError("an option left out of the hashed config says how it is recorded instead (recorded_as=...)")
    spec = OptionSpec(
        help=help, panel=panel, flags=tuple(flags), runtime=runtime, hashed=hashed and not runtime, recorded_as=recorded_as,
        hashed_unless=hashed_unless,
        choices=tuple(choices) if choices else None, range=Range.parse(range) if range else None,
        cli_type=cli_type, parse=parse,
    )
    return dataclasses.field(default=default, default_factory=default_factory, metadata={_OPTION: spec})


SEED_RANGE = "[0, 4294967295]"  # what numpy's and torch's generators take


def seed_option(help: str, **kwargs: Any) -> Any:
    """A stage's --seed: 0 by default, any 32-bit unsigned value; `help` says what it draws."""
    return option(0, help, range=SEED_RANGE, **kwargs)


def unused_seed_option(stage: str) -> Any:
    """The --seed of a stage that draws nothing: taken as every stage takes one, recorded nowhere."""
    return seed_option(f"Accepted as by every stage; {stage} draws nothing, so the manifest's seed is null.", hashed=False,
                       recorded_as="not recorded (nothing drawn)")


def group(cls: type, *, panel: str | None = None, help: dict[str, str] | None = None, hidden: tuple[str, ...] = (),
          **defaults: Any) -> Any:
    """A nested group of shared options, with this stage's defaults for some of them; `hidden`
    names options the stage sets itself (they stay parsed, so its check can say so, but are not
    offered in --help or the docs)."""
    for name in defaults:
        if name not in {f.name for f in dataclasses.fields(cls)}:
            raise TypeError(f"{cls.__name__} has no option {name!r}")
    missing = set(hidden) - {o.name for o in flat_options(cls)}
    if missing:
        raise TypeError(f"{cls.__name__} has no option {sorted(missing)[0]!r}")
    spec = GroupSpec(defaults=dict(defaults), panel=panel, help=dict(help or {}), hidden=frozenset(hidden))
    return dataclasses.field(default_factory=lambda: cls(**_copies(defaults)), metadata={_GROUP: spec})


def _copies(values: dict[str, Any]) -> dict[str, Any]:
    return {k: list(v) if isinstance(v, list) else v for k, v in values.items()}


@dataclass(frozen=True)
class FlatOption:
    """One option of a config, its group resolved: what the command line and docs need."""

    name: str
    type: Any
    default: Any  # MISSING when required
    spec: OptionSpec
    panel: str | None
    help: str
    path: tuple[str, ...]  # group field names leading to it ((), or ("optim",))
    hidden: bool = False  # set by the stage itself: parsed, not offered (GroupSpec.hidden)

    @property
    def flag(self) -> str:
        """Its long flag as typed (`--prompt`; `--fast` of `--fast/--no-fast`)."""
        long = next((f for f in self.spec.flags if f.startswith("--")), None)
        return long.split("/")[0] if long else "--" + self.name.replace("_", "-")

    @property
    def key(self) -> str:
        """Its key in a config file: the long flag, underscored (`max_steps`, `prompt`)."""
        return self.flag[2:].replace("-", "_")


@functools.cache
def _hints(cls: type) -> dict[str, Any]:
    return typing.get_type_hints(cls)


def _field_default(f: dataclasses.Field) -> Any:
    if f.default is not MISSING:
        return f.default
    if f.default_factory is not MISSING:
        return f.default_factory()
    return MISSING


@functools.lru_cache(maxsize=None)
def flat_options(cls: type) -> tuple[FlatOption, ...]:
    """Every option of a config class in declaration order, groups flattened in place."""
    return tuple(_flat_options(cls))


def _flat_options(cls: type, *, _path: tuple[str, ...] = (), _group: GroupSpec | None = None,
                  _hidden: frozenset[str] = frozenset()) -> list[FlatOption]:
    hints = _hints(cls)
    found: list[FlatOption] = []
    for f in dataclasses.fields(cls):
        if _GROUP in f.metadata:
            inner: GroupSpec = f.metadata[_GROUP]
            found.extend(_flat_options(hints[f.name], _path=_path + (f.name,), _group=inner, _hidden=_hidden | inner.hidden))
            continue
        spec: OptionSpec | None = f.metadata.get(_OPTION)
        if spec is None:
            raise TypeError(f"{cls.__name__}.{f.name} is a plain field; declare it with option(...) or group(...)")
        default = _field_default(f)
        panel, help_text = spec.panel, spec.help
        if _group is not None:
            default = _group.defaults.get(f.name, default)
            panel = spec.panel or _group.panel
            help_text = _group.help.get(f.name, help_text)
        found.append(FlatOption(f.name, hints[f.name], default, spec, panel, help_text, _path, hidden=f.name in _hidden))
    if not _path:
        names = [o.name for o in found]
        repeated = sorted({n for n in names if names.count(n) > 1})
        if repeated:
            raise TypeError(f"{cls.__name__}: option name(s) {', '.join(repeated)} appear in more than one group")
    return found


def json_ready(value: Any) -> Any:
    """Paths become strings, tuples lists, dataclasses dicts: what a manifest stores."""
    if dataclasses.is_dataclass(value) and not isinstance(value, type):
        return {f.name: json_ready(getattr(value, f.name)) for f in dataclasses.fields(value)}
    if isinstance(value, Path):
        return str(value)
    if isinstance(value, (list, tuple)):
        return [json_ready(v) for v in value]
    if isinstance(value, dict):
        return {str(k): json_ready(v) for k, v in value.items()}
    if isinstance(value, float) and value == 0.0:
        return 0.0  # -0.0 computes what 0.0 does, and must not give another fingerprint
    return value


class Options:
    """Base of every stage config and option group (subclasses are dataclasses).

    Construct from flat names with `build` (`PretrainConfig.build(model="tiny", lr=3e-3)`), so
    a group keeps the stage's defaults for whatever is not given.
    """

    def __post_init__(self) -> None:
        hints = _hints(type(self))
        for f in dataclasses.fields(self):  # (a group's own __post_init__ does its fields)
            if _OPTION in f.metadata:
                value = getattr(self, f.name)
                declared = _as_declared_number(value, hints[f.name])
                if declared is not value:
                    setattr(self, f.name, declared)
        self.check()

    @classmethod
    def default_of(cls, name: str) -> Any:
        """A field's own default (for a check that an option was left as it is)."""
        return _field_default(cls.__dataclass_fields__[name])

    @classmethod
    def build(cls: type[T], **values: Any) -> T:
        unknown = sorted(set(values) - {o.name for o in flat_options(cls)})
        if unknown:
            raise TypeError(f"{cls.__name__} has no option(s) {', '.join(unknown)}")
        config = _build(cls, values, None)
        config.given = frozenset(values)  # (not a field: kept only on the config `build` made)
        config.check_given(config.given)
        return config

    @classmethod
    def rebuild(cls: type[T], **values: Any) -> T:
        """The config of a run from every option it recorded (a worker's launch.json): nothing was
        given there, so no check of what was (`was_given` is None, as for a config not built)."""
        return _build(cls, values, None)

    def was_given(self, *names: str) -> bool | None:
        """Whether any of the flat options `names` was given to `build` (typed, or in a config file),
        even at its default; None for a config not made by `build`, where only values tell."""
        given = getattr(self, "given", None)
        return None if given is None else bool(given & set(names))

    def check_given(self, given: frozenset[str]) -> None:
        """A check of which options were given, not only of their values (none by default):
        `given` holds the flat names passed to `build`, for a command the flags typed and the
        config file's keys, so that a value given equal to its default is still told from it."""

    def _items(self) -> Iterator[tuple[FlatOption, Any]]:
        for opt in flat_options(type(self)):
            holder = self
            for name in opt.path:
                holder = getattr(holder, name)
            yield opt, getattr(holder, opt.name)

    def flat(self) -> dict[str, Any]:
        """Every option by its flat name, JSON-ready (what `build` takes back)."""
        return {opt.name: json_ready(value) for opt, value in self._items()}

    def hashed(self) -> dict[str, Any]:
        """The options the fingerprint covers (the manifest's `config`)."""
        return {opt.name: json_ready(value) for opt, value in self._items()
                if opt.spec.hashed and not (opt.spec.hashed_unless is not HASHED_ALWAYS and value == opt.spec.hashed_unless)}

    def left_out_at(self) -> dict[str, Any]:
        """The options `hashed()` leaves out at a value, by that value: what a recorded config
        without them ran with (a resume compares a run recorded before them so)."""
        return {opt.name: opt.spec.hashed_unless for opt, _ in self._items() if opt.spec.hashed_unless is not HASHED_ALWAYS}

    def runtime(self) -> dict[str, Any]:
        """How the work ran, not what it computed (the manifest's `runtime`)."""
        return {opt.name: json_ready(value) for opt, value in self._items() if opt.spec.runtime}

    def check(self) -> None:
        """Every value against its declaration: type, finite, range, choices. An OptionError names
        the flag, what it must be and what it got, for values from flags, files and Python alike."""
        for opt, value in self._items():
            problem = value_problem(opt, value)
            if problem:
                raise OptionError(problem)


def value_problem(opt: Any, value: Any) -> str | None:
    """What is wrong with `value` for option `opt` (its type, finiteness, range, choices), or None."""
    flag = opt.flag
    problem = _type_problem(value, opt.type)
    if problem:  # (true and null as a config file spells them: "got True" named no value the user wrote)
        shown = {True: "true", False: "false", None: "null"}.get(value, repr(value)) if isinstance(value, (bool, type(None))) else repr(value)
        return f"{flag} must be {problem}, got {shown}"
    for number in _numbers(value):
        if isinstance(number, float) and not math.isfinite(number):
            return f"{flag} must be a finite number, got {value!r}"
        if opt.spec.range is not None and number not in opt.spec.range:
            return f"{flag} must be {opt.spec.range.describe()}, got {number!r}"
    if opt.spec.choices and value is not None and value not in opt.spec.choices:
        return f"{flag} must be one of {', '.join(opt.spec.choices)}, got {value!r}"
    return None


def _numbers(value: Any) -> list[float]:
    items = value if isinstance(value, (list, tuple)) else [value]
    return [v for v in items if isinstance(v, (int, float)) and not isinstance(v, bool)]


_TYPE_NAMES = {int: "a whole number", float: "a number", bool: "true or false", str: "text", Path: "a path"}


def _type_problem(value: Any, annotation: Any) -> str | None:
    """What `value` should have been, when it is not of the declared type (None when it is)."""
    origin, args = typing.get_origin(annotation), typing.get_args(annotation)
    if origin in (typing.Union, types.UnionType):
        if value is None and type(None) in args:
            return None
        problems = [_type_problem(value, arg) for arg in args if arg is not type(None)]
        return None if any(p is None for p in problems) else " or ".join(p for p in problems if p)
    if origin in (list, tuple):
        if not isinstance(value, (list, tuple)):
            return f"a list of {_TYPE_NAMES.get(args[0], 'values') if args else 'values'}"
        inner = [_type_problem(item, args[0]) for item in value] if args else []
        return next((f"a list of {p}" for p in inner if p), None)
    if annotation is bool:
        return None if isinstance(value, bool) else _TYPE_NAMES[bool]
    if annotation is int:
        return None if isinstance(value, int) and not isinstance(value, bool) else _TYPE_NAMES[int]
    if annotation is float:
        return None if isinstance(value, (int, float)) and not isinstance(value, bool) else _TYPE_NAMES[float]
    if annotation is str:
        return None if isinstance(value, str) else _TYPE_NAMES[str]
    if annotation is Path:
        return None if isinstance(value, (str, Path)) else _TYPE_NAMES[Path]
    return None


def _as_declared_number(value: Any, annotation: Any) -> Any:
    """A whole number given for a float option is that float, as a flag's and a file's are:
    `build(val_fraction=0)` from Python recorded 0, where the command line's --val-fraction 0 records
    0.0, another fingerprint for the same work."""
    origin = typing.get_origin(annotation)
    args = typing.get_args(annotation)
    if origin in (typing.Union, types.UnionType):
        non_none = [a for a in args if a is not type(None)]
        return _as_declared_number(value, non_none[0]) if value is not None and len(non_none) == 1 else value
    if annotation is float and isinstance(value, int) and not isinstance(value, bool):
        return float(value)
    if origin is list and args and args[0] is float and isinstance(value, list) \
            and any(isinstance(v, int) and not isinstance(v, bool) for v in value):
        return [_as_declared_number(v, float) for v in value]
    return value


def _build(cls: type, values: dict[str, Any], spec: GroupSpec | None) -> Any:
    hints = _hints(cls)
    kwargs: dict[str, Any] = {}
    for f in dataclasses.fields(cls):
        if _GROUP in f.metadata:
            kwargs[f.name] = _build(hints[f.name], values, f.metadata[_GROUP])
        elif f.name in values:
            kwargs[f.name] = values[f.name]
        elif spec is not None and f.name in spec.defaults:
            kwargs[f.name] = _copies({f.name: spec.defaults[f.name]})[f.name]
    return cls(**kwargs)


def comma_list(value: Any) -> list[str]:
    """A command-line list: `a,b`, or the option repeated -> ["a", "b"]."""
    items = value if isinstance(value, (list, tuple)) else [value]
    return [part.strip() for item in items for part in str(item).split(",") if part.strip()]


def path_strings(paths: list[Path]) -> list[str]:
    """Paths typed on the command line, kept as the strings a config records (`--ensemble`, `--references`)."""
    return [str(p) for p in paths]


def comma_floats(value: Any) -> list[float]:
    """`2e5,1e6` (or the flag repeated) -> [200000.0, 1000000.0]; an empty entry (`1,,2`) is refused:
    the numbers' positions can matter (average's --weights)."""
    items = value if isinstance(value, (list, tuple)) else [value]
    parts = [part.strip() for item in items for part in str(item).split(",")]
    if any(not part for part in parts) and any(parts):
        raise ValueError("an empty entry between commas")
    try:
        return [float(part) for part in parts if part]
    except ValueError as exc:
        raise ValueError(f"expected numbers separated by commas ({exc})") from None


_ESCAPES = {"n": "\n", "t": "\t", "\\": "\\"}


def unescape(text: str) -> str:
    """`\\n`, `\\t` and `\\\\` typed on a command line (where a shell passes them literally)
    become a newline, a tab and a backslash; any other backslash is kept as it is."""
    import re

    return re.sub(r"\\([nt\\])", lambda m: _ESCAPES[m.group(1)], text)


def unescape_each(values: Any) -> list[str]:
    return [unescape(v) for v in values]


def stop_strings(values: Any) -> list[str]:
    """--stop as typed (\\n a newline); an empty one, which would match before anything, is refused."""
    strings = unescape_each(values)
    if any(not s for s in strings):
        raise ValueError("an empty stop string would stop at once; leave it out or give the text to stop at")
    return strings
