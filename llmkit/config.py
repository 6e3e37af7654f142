"""Stage configuration: dataclass defaults < config file (TOML/YAML) < flags given on the command line.

Every stage keeps its options in one dataclass. A recipe may pass `--config FILE`; a file may
hold one table per stage (`[clean]`, `[pretrain]`, ...) or the stage's keys at top level.
The resolved dataclass is what the artifact manifest stores.
"""

from __future__ import annotations

import dataclasses
import sys
import types
import typing
from pathlib import Path
from typing import Any, TypeVar

from llmkit.errors import UserError

if sys.version_info >= (3, 11):
    import tomllib
else:  # pragma: no cover
    import tomli as tomllib

T = TypeVar("T")


def load_config_file(path: Path | str) -> dict[str, Any]:
    path = Path(path)
    if not path.is_file():
        raise UserError(f"config file not found: {path}; pass an existing .toml or .yaml file")
    text = path.read_text(encoding="utf-8")
    try:
        if path.suffix == ".toml":
            data = tomllib.loads(text)
        elif path.suffix in (".yaml", ".yml"):
            import yaml

            data = yaml.safe_load(text) or {}
        else:
            raise UserError(f"config file {path} must end in .toml, .yaml or .yml")
    except (tomllib.TOMLDecodeError, ValueError) as exc:
        raise UserError(f"config file {path} is not valid: {exc}") from exc
    except Exception as exc:  # yaml.YAMLError and friends
        if isinstance(exc, UserError):
            raise
        raise UserError(f"config file {path} is not valid: {exc}") from exc
    if not isinstance(data, dict):
        raise UserError(f"config file {path} must hold a table of options")
    return data


def _coerce(value: Any, annotation: Any, name: str) -> Any:
    """Light type coercion for values read from config files (TOML/YAML already give most types)."""
    if isinstance(annotation, str):
        return value
    origin = typing.get_origin(annotation)
    args = typing.get_args(annotation)
    if origin in (typing.Union, types.UnionType):
        if value is None:
            return None
        non_none = [a for a in args if a is not type(None)]
        return _coerce(value, non_none[0], name) if len(non_none) == 1 else value
    if annotation is float and isinstance(value, int) and not isinstance(value, bool):
        return float(value)
    if origin in (list, tuple) and isinstance(value, (list, tuple)):
        return list(value) if origin is list else tuple(value)
    return value


def resolve(
    config_cls: type[T],
    *,
    file: Path | str | None = None,
    section: str | None = None,
    explicit: dict[str, Any] | None = None,
) -> T:
    """Build a stage config from its defaults, an optional file, and the explicitly given flags.

    `explicit` holds only the options the user actually typed (see `explicit_params`), so a
    flag left at its default never overrides the config file.
    """
    fields = {f.name: f for f in dataclasses.fields(config_cls)}
    hints = typing.get_type_hints(config_cls)
    values: dict[str, Any] = {}
    if file is not None:
        data = load_config_file(file)
        if section and isinstance(data.get(section), dict):
            data = data[section]
        data = {k.replace("-", "_"): v for k, v in data.items() if not isinstance(v, dict)}
        unknown = sorted(set(data) - set(fields))
        if unknown:
            raise UserError(
                f"unknown option(s) in {file}: {', '.join(unknown)}; "
                f"known options are: {', '.join(sorted(fields))}"
            )
        values.update({k: _coerce(v, hints[k], k) for k, v in data.items()})
    for key, value in (explicit or {}).items():
        if key in fields:
            values[key] = value
    try:
        return config_cls(**values)
    except (TypeError, ValueError) as exc:
        raise UserError(f"invalid configuration: {exc}") from exc


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


def to_dict(config: Any) -> dict[str, Any]:
    """A JSON-ready dict of a config dataclass (paths become strings, tuples lists)."""

    def convert(value: Any) -> Any:
        if dataclasses.is_dataclass(value) and not isinstance(value, type):
            return {f.name: convert(getattr(value, f.name)) for f in dataclasses.fields(value)}
        if isinstance(value, Path):
            return str(value)
        if isinstance(value, (list, tuple)):
            return [convert(v) for v in value]
        if isinstance(value, dict):
            return {str(k): convert(v) for k, v in value.items()}
        return value

    return convert(config)
