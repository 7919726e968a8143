"""The README's promises that a machine can check: CI runs its test command as written,
and every ```python block runs as pasted, against the fake providers.

The blocks run in order in one namespace, as cells of one notebook would, with top-level
`await` allowed (as in Jupyter, IPython or `python -m asyncio`). A block whose fence reads
```python no-run is for reading only: say in the README what it needs that the tests do
not have. test_notebook.py runs the same blocks in a real Jupyter kernel.
"""

from __future__ import annotations

import ast
import asyncio
import inspect
import re
from pathlib import Path
from typing import Any

import pytest

ROOT = Path(__file__).parent.parent
README = (ROOT / "README.md").read_text()
PRELUDE = 'texts = ["I loved it, works perfectly.", "It broke after a day."]\n'  # a few inputs
CITY = '{"name": "Tokyo", "country": "Japan", "population": 37400000}'
_namespace: dict[str, Any] = {}


def answer_for(source: str, openai: Any) -> None:
    """Before a block runs: the fake answers its structured call as a real model would, with
    JSON that fits the schema (then its usual text again)."""
    if "schema=City" in source:
        openai.replies(CITY, openai.reply_text)


def commands() -> list[str]:
    block = README.split("```bash\n", 1)[1].split("```", 1)[0]
    return [line for line in block.splitlines() if line and not line.startswith("#")]


def python_blocks() -> list[tuple[int, str]]:
    """(line number, source) of every ```python block that is meant to run."""
    return [(README[:found.start()].count("\n") + 1, found[2]) for found in re.finditer(
        r"^```python( no-run)?[ \t]*\n(.*?)^```", README, re.M | re.S) if not found[1]]


def test_the_readme_has_exactly_two_commands_and_ci_runs_the_second_verbatim():
    setup, tests = commands()
    assert "ember demo" in setup and "pytest" in tests
    ci = (ROOT / ".ci" / "run").read_text().splitlines()
    assert tests in ci


@pytest.mark.usefixtures("anthropic_srv", "gemini_srv")
@pytest.mark.parametrize("line, source", python_blocks(), ids=lambda v: f"line {v}"
                         if isinstance(v, int) else "")
def test_every_python_block_of_the_readme_runs_as_pasted(line: int, source: str, openai_srv: Any):
    answer_for(source, openai_srv)
    if not _namespace:
        exec(PRELUDE, _namespace)
    code = compile(source, f"README.md, the block at line {line}", "exec",
                   flags=ast.PyCF_ALLOW_TOP_LEVEL_AWAIT)
    result = eval(code, _namespace)  # a coroutine when the block awaits at top level
    if inspect.iscoroutine(result):
        asyncio.run(result)


def test_the_readme_has_python_blocks_to_run():
    assert len(python_blocks()) >= 5  # the harness found them: a change of fence is noticed
