"""Layers import downward: simulators -> recsim_env (envs) -> agents -> evaluation -> CLI.

Every import counts, also one inside a function: a layer may import its own layer and those
below it, never one above.
"""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
LAYERS = ["simulators", "recsim_env", "agents", "evaluation", "recsim_env.cli"]
"""Bottom to top."""


def _layer(module: str) -> int | None:
    """Index of the layer a dotted module name belongs to (the most specific prefix)."""
    best = None
    for i, name in enumerate(LAYERS):
        if module == name or module.startswith(name + "."):
            if best is None or len(name) > len(LAYERS[best]):
                best = i
    return best


def _imports(path: Path) -> list[tuple[int, str]]:
    tree = ast.parse(path.read_text())
    out = []
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            out += [(node.lineno, alias.name) for alias in node.names]
        elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            out.append((node.lineno, node.module))
    return out


def _sources() -> list[Path]:
    return sorted(
        p
        for pkg in ("simulators", "recsim_env", "agents", "evaluation")
        for p in (ROOT / pkg).rglob("*.py")
    )


@pytest.mark.parametrize("path", _sources(), ids=lambda p: str(p.relative_to(ROOT)))
def test_imports_point_downward(path: Path) -> None:
    module = ".".join(path.relative_to(ROOT).with_suffix("").parts)
    own = _layer(module)
    assert own is not None
    upward = [
        f"{path.relative_to(ROOT)}:{line} imports {name} ({LAYERS[other]} is above {LAYERS[own]})"
        for line, name in _imports(path)
        if (other := _layer(name)) is not None and other > own
    ]
    assert not upward, "\n".join(upward)


RAY_MODULES = {"evaluation/distributed.py", "agents/rllib.py"}
"""The only modules that import Ray (an optional extra); simulators/ and the envs never do."""


def test_ray_is_imported_only_by_the_scale_out_modules() -> None:
    offenders = [
        f"{path.relative_to(ROOT)}:{line} imports {name}"
        for path in _sources()
        for line, name in _imports(path)
        if (name == "ray" or name.startswith("ray."))
        and path.relative_to(ROOT).as_posix() not in RAY_MODULES
    ]
    assert not offenders, "\n".join(offenders)
