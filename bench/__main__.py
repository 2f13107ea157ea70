"""Entry point: ``uv run python -m bench [--quick]``."""

from __future__ import annotations

from bench.cli import main

if __name__ == "__main__":
    raise SystemExit(main())
