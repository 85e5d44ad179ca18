"""The package as users install it: a wheel built from this checkout, installed (not editable)
into a fresh virtual environment, run from a folder outside the checkout.

Offline and quick: the wheel is built with the backend already installed here (no build
isolation), installed with ``--no-deps --no-index``, and the new environment sees this
interpreter's dependencies (torch and the rest) through a ``.pth`` file, so nothing is fetched.
The new environment's own site-packages comes first, so ``cpd`` is the installed copy."""

from __future__ import annotations

import json
import os
import shutil
import site
import subprocess
import sys
import sysconfig
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]
# what the build reads; copied out so the build writes nothing into the checkout
BUILD_INPUTS = ("pyproject.toml", "README.md", "src")
# how `cpd demo` takes its output directory (see `cpd demo --help`)
DEMO_ARGS = ["demo", "-o", "{out}", "--quick", "--threads", "1"]
TIMEOUT = 600


def run(cmd: list[str], cwd: Path, env: dict[str, str]) -> subprocess.CompletedProcess[str]:
    proc = subprocess.run(cmd, cwd=cwd, env=env, capture_output=True, text=True, timeout=TIMEOUT)
    assert proc.returncode == 0, f"{cmd} exited {proc.returncode}\n{proc.stdout}\n{proc.stderr}"
    return proc


def dependency_dirs() -> list[str]:
    """This interpreter's site-packages folders (where torch and the other dependencies are)."""
    dirs = [sysconfig.get_paths()["purelib"], sysconfig.get_paths()["platlib"]]
    dirs += site.getsitepackages()
    if site.ENABLE_USER_SITE:
        dirs.append(site.getusersitepackages())
    return list(dict.fromkeys(d for d in dirs if Path(d).is_dir()))


@pytest.fixture(scope="module")
def installed(tmp_path_factory):
    """(python of the new environment, its site-packages, a working folder, subprocess env)."""
    base = tmp_path_factory.mktemp("wheel")
    source = base / "source"
    source.mkdir()
    ignore = shutil.ignore_patterns("__pycache__", "*.egg-info", "build")
    for name in BUILD_INPUTS:
        if (REPO / name).is_dir():
            shutil.copytree(REPO / name, source / name, ignore=ignore)
        else:
            shutil.copy2(REPO / name, source / name)

    env = {k: v for k, v in os.environ.items() if k not in ("PYTHONPATH", "PYTHONHOME")}
    env["PIP_DISABLE_PIP_VERSION_CHECK"] = "1"
    work = base / "work"
    work.mkdir()
    assert not work.resolve().is_relative_to(REPO), "the working folder must be outside"

    wheels = base / "wheels"
    run([sys.executable, "-m", "pip", "wheel", "--no-deps", "--no-build-isolation", "--no-index",
         "-w", str(wheels), str(source)], work, env)  # fmt: skip
    (wheel,) = wheels.glob("cpd-*.whl")

    venv = base / "venv"
    run([sys.executable, "-m", "venv", str(venv)], work, env)
    python = venv / ("Scripts/python.exe" if os.name == "nt" else "bin/python")
    purelib = run([str(python), "-c", "import sysconfig; print(sysconfig.get_paths()['purelib'])"],
                  work, env).stdout.strip()  # fmt: skip
    run([str(python), "-m", "pip", "install", "--no-deps", "--no-index", str(wheel)], work, env)
    # the dependencies, after the new site-packages (so this cpd wins over any other)
    (Path(purelib) / "_cpd_test_dependencies.pth").write_text("\n".join(dependency_dirs()) + "\n")
    return python, Path(purelib), work, env


def test_installed_cpd_is_the_wheel_not_the_checkout(installed):
    python, purelib, work, env = installed
    code = "import json, sys, cpd; print(json.dumps([cpd.__file__, sys.path]))"
    where, path = json.loads(run([str(python), "-c", code], work, env).stdout)
    assert Path(where).resolve().is_relative_to(purelib.resolve()), where
    assert str(REPO / "src") not in path


def test_installed_wheel_ships_presets_and_splits(installed):
    python, purelib, work, env = installed
    presets = {p.stem for p in (purelib / "cpd" / "configs").glob("*.yaml")}
    assert presets == {p.stem for p in (REPO / "src" / "cpd" / "configs").glob("*.yaml")}
    assert "pretrain_synthetic_cpu" in presets
    code = ("from cpd.data.packaged_splits import packaged_split_path as p\n"
            "for d in ('ucf101', 'hmdb51'):\n"
            "    for s in (1, 2, 3):\n"
            "        assert p(d, s).is_file(), p(d, s)\n"
            "print(p('ucf101', 1))")  # fmt: skip
    where = run([str(python), "-c", code], work, env).stdout.strip()
    assert Path(where).resolve().is_relative_to(purelib.resolve()), where


def test_installed_cli_prints_a_preset(installed):
    python, _, work, env = installed
    cpd = python.parent / ("cpd.exe" if os.name == "nt" else "cpd")
    proc = run([str(cpd), "pretrain", "--config", "pretrain_synthetic_cpu", "--print-config"],
               work, env)  # fmt: skip
    assert "data:" in proc.stdout and "model:" in proc.stdout


def test_installed_cli_runs_the_quick_demo(installed):
    python, _, work, env = installed
    cpd = python.parent / ("cpd.exe" if os.name == "nt" else "cpd")
    out = work / "demo"
    run([str(cpd), *(a.format(out=out) for a in DEMO_ARGS)], work, env)
    results = json.loads((out / "results.json").read_text())
    assert results["quick"]
    assert (out / "report.md").is_file()
