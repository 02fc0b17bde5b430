"""The error type for invalid user input, which the program reports with exit status 2."""

from __future__ import annotations

__all__ = ["UsageError"]


class UsageError(Exception):
    """Invalid user input: an option value, a data file, a checkpoint or an output folder.

    The message states what was wrong and what to do. `examples/train.py` prints it on stderr
    and exits with status 2, the status argparse uses for invalid options.
    """
