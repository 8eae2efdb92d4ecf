"""The README's first-screen code runs as written (budgets shrunk where marked)."""

from __future__ import annotations

import re
from pathlib import Path

README = Path(__file__).resolve().parent.parent / "README.md"


def _python_blocks() -> list[str]:
    return re.findall(r"```python\n(.*?)```", README.read_text(), flags=re.S)


def test_the_quickstart_env_code_runs() -> None:
    exec(compile(_python_blocks()[0], "README.md", "exec"), {})


def test_the_sb3_code_runs_with_a_smaller_budget() -> None:
    code = (
        _python_blocks()[1].replace("learn(20_000)", "learn(256)").replace("users=200", "users=4")
    )
    scope: dict = {}
    exec(compile(code, "README.md", "exec"), scope)
    assert "model" in scope
