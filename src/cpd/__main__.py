"""``python -m cpd`` is the ``cpd`` command (torchrun launches it this way)."""

from cpd.cli import main

if __name__ == "__main__":
    raise SystemExit(main())
