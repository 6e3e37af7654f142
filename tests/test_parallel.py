"""The ordered parallel map of the data stages: input order, bounded, and a clear error when workers cannot start."""

from __future__ import annotations

import os
import subprocess
import sys
import textwrap

from conftest import REPO
from llmkit.parallel import ordered_map

_SEEN = []


def _square(x: int) -> int:
    return x * x


def _remember(tag: str) -> None:
    _SEEN.append(tag)


def test_results_in_input_order_for_any_worker_count():
    items = list(range(50))
    expected = [x * x for x in items]
    assert list(ordered_map(_square, iter(items), workers=1)) == expected
    assert list(ordered_map(_square, iter(items), workers=2)) == expected


def test_the_initializer_runs_here_with_one_worker():
    _SEEN.clear()
    assert list(ordered_map(_square, [3], workers=1, initializer=_remember, initargs=("here",))) == [9]
    assert _SEEN == ["here"]


def test_clean_in_a_script_without_main_guard_fails_in_one_line(tmp_path, shared_data):
    """Spawned workers re-import the script; without the guard they cannot start. Both data stages share the map,
    so clean reports it as tokenize does instead of restarting workers forever."""
    script = tmp_path / "unguarded.py"
    script.write_text(textwrap.dedent(f"""
        from llmkit.corpus import pipeline
        from llmkit.corpus.config import CleanConfig
        pipeline.clean([{str(shared_data / 'tinyshakespeare.txt')!r}], {str(tmp_path / 'out')!r},
                       CleanConfig(workers=2, doc_per="blank-line"), show_progress=False)
    """))
    env = dict(os.environ, PYTHONPATH=str(REPO))
    proc = subprocess.run([sys.executable, str(script)], capture_output=True, text=True, timeout=300, env=env, cwd=tmp_path)
    assert proc.returncode != 0
    assert "if __name__ == \"__main__\":" in proc.stderr
    assert not (tmp_path / "out").exists()
