"""``python -m celery_memguard``: the command line (see :mod:`celery_memguard.cli`)."""

from __future__ import annotations

import sys

from .cli import main

if __name__ == "__main__":
    sys.exit(main(prog_name="python -m celery_memguard"))
