"""``python -m sqlstore``: the ``sqlstore`` command line."""

from sqlstore.cli import main

if __name__ == "__main__":
    raise SystemExit(main())
