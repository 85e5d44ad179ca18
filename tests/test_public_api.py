"""The names ``import cpd`` offers: all resolve, the errors are complete, nothing internal."""

from __future__ import annotations

import ast
import inspect
import subprocess
import sys
from pathlib import Path

import pytest

import cpd
from cpd.errors import CPDError

SRC = Path(__file__).resolve().parents[1] / "src" / "cpd"

#: ``read_*`` functions that belong in the top level: they read every format they know of.
GENERAL_READERS = {"read_caption_manifest"}


def _public_names() -> list[str]:
    return [name for name in cpd.__all__ if name != "__version__"]


def _error_classes_in_the_package() -> set[str]:
    """Public classes under src/cpd deriving from a cpd error, found by parsing the sources
    (so that a new error is seen without importing every module)."""
    errors = {"CPDError"}
    classes: list[tuple[str, list[str]]] = []
    for path in SRC.rglob("*.py"):
        for node in ast.walk(ast.parse(path.read_text(), filename=str(path))):
            if isinstance(node, ast.ClassDef):
                bases = [
                    b.id if isinstance(b, ast.Name) else getattr(b, "attr", "") for b in node.bases
                ]
                classes.append((node.name, bases))
    grew = True
    while grew:  # errors deriving from errors, in any order of definition
        grew = False
        for name, bases in classes:
            if name not in errors and any(b in errors for b in bases):
                errors.add(name)
                grew = True
    return {name for name in errors if not name.startswith("_")}


@pytest.mark.parametrize("name", _public_names())
def test_every_exported_name_resolves_and_is_documented(name):
    value = getattr(cpd, name)
    assert value is not None
    if inspect.isclass(value) or inspect.isfunction(value):
        assert inspect.getdoc(value), f"cpd.{name} has no docstring"


def test_all_is_what_dir_lists_and_unknown_names_fail():
    assert len(set(cpd.__all__)) == len(cpd.__all__)
    assert dir(cpd) == sorted(cpd.__all__)
    with pytest.raises(AttributeError, match="no attribute 'read_ucf101'"):
        cpd.read_ucf101  # noqa: B018


def test_nothing_private_or_format_specific_is_exported():
    assert not [n for n in _public_names() if n.startswith("_")]
    readers = {
        n for n in _public_names() if n.startswith(("read_", "write_")) and "synthetic" not in n
    }
    assert readers <= GENERAL_READERS, (
        f"format readers belong in their modules: {readers - GENERAL_READERS}"
    )


def test_the_exported_errors_are_cpd_errors_and_all_of_them():
    exported = {n for n in _public_names() if inspect.isclass(getattr(cpd, n))
                and issubclass(getattr(cpd, n), BaseException)}  # fmt: skip
    for name in exported:
        assert issubclass(getattr(cpd, name), CPDError), name
    assert cpd.CPDError is CPDError
    assert _error_classes_in_the_package() == exported


def test_import_cpd_stays_light_and_reaches_the_library_packages():
    code = (
        "import sys, cpd\n"
        "print(sorted(m for m in ('torch', 'av', 'transformers') if m in sys.modules))\n"
        "print(cpd.data.read_ucf101.__module__, cpd.video.display_size.__module__)\n"
        "print(hasattr(cpd, 'commands'), hasattr(cpd, 'cli'))\n"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.split("\n")[:3] == [
        "[]",
        "cpd.data.actions cpd.video.decode",
        "False False",
    ]
