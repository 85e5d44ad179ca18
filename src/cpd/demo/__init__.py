"""The demo's engine: the whole CPD story on the embedded synthetic dataset.

``cpd demo`` is a thin command over :func:`run_demo`; the stages are in
:mod:`cpd.demo.stages`, what they write (table, ``report.md``, ``results.json``, figures) in
:mod:`cpd.demo.report`, the settings and the outputs the demo owns in :mod:`cpd.demo.settings`.
"""

from __future__ import annotations

from cpd.demo.settings import DemoSettings
from cpd.demo.stages import run_demo

__all__ = ["DemoSettings", "run_demo"]
