"""`builtin:python-docs`: a few MB of English that ships with every CPython, for demos and tests.

One document per `pydoc_data.topics` entry (the language reference sections `help()` shows),
then one per standard-library module: its module docstring followed by the docstrings of its
classes and functions, read with `ast` so nothing is imported or executed. Order is fixed
(sorted topic names, then sorted module paths); the text itself depends on the Python version.
"""

from __future__ import annotations

import ast
import os
import sysconfig
import warnings
from collections import deque
from pathlib import Path
from typing import Iterator

NAME = "python-docs"
# Test suites and vendored third-party code are not documentation.
_SKIP_PARTS = frozenset({"test", "tests", "idle_test", "site-packages", "dist-packages", "__pycache__"})


def _stdlib_root() -> Path:
    return Path(sysconfig.get_paths()["stdlib"])


def module_files() -> list[Path]:
    root = _stdlib_root()
    files = []
    for folder, subfolders, names in os.walk(root):
        subfolders[:] = [name for name in subfolders if name not in _SKIP_PARTS]  # not walked at all (site-packages)
        files += [Path(folder, name) for name in names if name.endswith(".py")]
    return sorted(files, key=lambda p: p.relative_to(root).as_posix())


def _module_text(path: Path) -> str:
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")  # invalid escape sequences in old modules
            tree = ast.parse(path.read_bytes(), filename=str(path))
    except (SyntaxError, ValueError, UnicodeDecodeError):
        return ""
    parts = []
    module_doc = ast.get_docstring(tree)
    if module_doc:
        parts.append(module_doc)
    for node in _definitions(tree):
        doc = ast.get_docstring(node)
        if doc:
            parts.append(f"{node.name}\n\n{doc}")
    return "\n\n".join(parts)


# The fields that hold statements (or except handlers and match cases, which hold statements), so the
# only places a class or function can be (a lambda is an expression).
_STATEMENT_FIELDS = frozenset({"body", "orelse", "finalbody", "handlers", "cases"})


def _definitions(tree: ast.AST) -> Iterator[ast.ClassDef | ast.FunctionDef | ast.AsyncFunctionDef]:
    """The classes and functions in ast.walk's order (breadth first, fields in their order), without
    walking the expressions, which are most of a module's nodes and hold none."""
    todo = deque([tree])
    while todo:
        node = todo.popleft()
        if isinstance(node, (ast.ClassDef, ast.FunctionDef, ast.AsyncFunctionDef)):
            yield node
        for name in node._fields:
            if name in _STATEMENT_FIELDS and isinstance(children := getattr(node, name), list):
                todo.extend(children)


def python_docs() -> Iterator[tuple[str, str]]:
    """(key, text) pairs: `topic/<name>` and `module/<dotted.name>`."""
    from pydoc_data.topics import topics

    for name in sorted(topics):
        yield f"topic/{name}", topics[name]
    root = _stdlib_root()
    for path in module_files():
        text = _module_text(path)
        if text.strip():
            parts = path.relative_to(root).with_suffix("").parts
            dotted = ".".join(parts[:-1] if parts[-1] == "__init__" else parts)
            yield f"module/{dotted}", text
