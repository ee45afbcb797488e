"""The public surface: what `import tflite_pipeline as tp` offers, and the package's layering rules.

The snapshot (tests/api_snapshot.txt) fails when a top-level name, a verb's signature or a result type's fields
change by accident. After an intended change: `UPDATE_API_SNAPSHOT=1 make test-fast`, and review the diff.
"""

from __future__ import annotations

import ast
import dataclasses
import inspect
import os
import re
from pathlib import Path

import pytest

import tflite_pipeline as tp

pytestmark = pytest.mark.fast

PACKAGE = Path(tp.__file__).parent
SNAPSHOT = Path(__file__).with_name("api_snapshot.txt")


def describe(name: str, value: object) -> list[str]:
    if inspect.isclass(value) and issubclass(value, BaseException):
        code = getattr(value, "exit_code", None)
        return [f"error {name}({value.__mro__[1].__name__}) exit {code if isinstance(code, int) else '128+signal'}"]
    if inspect.isclass(value):
        lines = [f"class {name}"]
        if dataclasses.is_dataclass(value):
            lines += [f"  field {f.name}: {f.type}" for f in dataclasses.fields(value)]
        lines += [f"  def {attr}{inspect.signature(member)}" for attr, member in sorted(vars(value).items())
                  if not attr.startswith("_") and inspect.isfunction(member)]
        lines += [f"  property {attr}" for attr, member in sorted(vars(value).items())
                  if not attr.startswith("_") and isinstance(member, property)]
        return lines
    return [f"def {name}{inspect.signature(value)}"]


def public_surface() -> str:
    lines = [f"__all__ = {sorted(tp.__all__)}"]
    for name in tp.__all__:
        lines += describe(name, getattr(tp, name))
    return re.sub(r" at 0x[0-9a-f]+", "", "\n".join(lines) + "\n")  # default functions' addresses


def test_the_public_api_matches_its_snapshot():
    surface = public_surface()
    if os.environ.get("UPDATE_API_SNAPSHOT"):
        SNAPSHOT.write_text(surface, encoding="utf-8")
    assert surface == SNAPSHOT.read_text(encoding="utf-8"), (
        "the public API changed; if intended, run `UPDATE_API_SNAPSHOT=1 make test-fast` and review the diff")


def test_the_top_level_is_small_and_every_name_resolves():
    assert len(tp.__all__) <= 30
    for name in tp.__all__:
        assert getattr(tp, name) is not None
    for sub in ("config", "data", "model", "optimize", "tflite", "runs", "export"):
        assert getattr(tp, sub).__doc__, f"tflite_pipeline.{sub} says what it holds"


def test_no_module_imports_another_modules_private_names():
    offenders = []
    for path in sorted(PACKAGE.rglob("*.py")):
        for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
            if isinstance(node, ast.ImportFrom) and (node.module or "").startswith("tflite_pipeline"):
                offenders += [f"{path.relative_to(PACKAGE)}: {node.module}.{alias.name}" for alias in node.names
                              if alias.name.startswith("_") and alias.name != "__version__"]
    assert offenders == []


def test_no_module_shadows_the_standard_library():
    import sys

    shadowing = [p.relative_to(PACKAGE) for p in PACKAGE.rglob("*.py") if p.stem in sys.stdlib_module_names]
    assert shadowing == []


def test_every_stage_is_registered_once_with_a_distinct_section():
    from tflite_pipeline.optimize import STAGES

    sections = [stage.section for stage in STAGES]
    assert len(set(sections)) == len(sections)
    assert [s.makes_baseline for s in STAGES].count(True) == 1 and STAGES[0].makes_baseline
