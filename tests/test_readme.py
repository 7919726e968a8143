"""The README's promises that a machine can check: CI runs its test command as written."""

from __future__ import annotations

from pathlib import Path

ROOT = Path(__file__).parent.parent


def commands() -> list[str]:
    readme = (ROOT / "README.md").read_text()
    block = readme.split("```bash\n", 1)[1].split("```", 1)[0]
    return [line for line in block.splitlines() if line and not line.startswith("#")]


def test_the_readme_has_exactly_two_commands_and_ci_runs_the_second_verbatim():
    setup, tests = commands()
    assert "ember demo" in setup and "pytest" in tests
    ci = (ROOT / ".ci" / "run").read_text().splitlines()
    assert tests in ci
