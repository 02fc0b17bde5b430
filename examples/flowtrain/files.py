"""Atomic file writing and the writability check of the output folder."""

from __future__ import annotations

import json
import os
import tempfile
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import IO, Any

from flowtrain.errors import UsageError

__all__ = ["atomic_open", "atomic_write_json", "prepare_output_dir"]


def _current_umask() -> int:
    mask = os.umask(0)
    os.umask(mask)
    return mask


@contextmanager
def atomic_open(path: str | os.PathLike[str]) -> Iterator[IO[bytes]]:
    """Open a temporary file next to `path` for binary writing, then move it onto `path`.

    The temporary file lies in the same folder, so `os.replace` renames it in one step and
    readers see either the old file or the complete new one. If the block raises, the
    temporary file is removed and `path` is left as it was.
    """
    target = Path(path)
    descriptor, temporary = tempfile.mkstemp(dir=target.parent, prefix=f".{target.name}.", suffix=".tmp")
    try:
        # mkstemp creates the file readable by its owner only; give it the usual permissions.
        os.chmod(temporary, 0o666 & ~_current_umask())
        with os.fdopen(descriptor, "wb") as handle:
            yield handle
            handle.flush()
            os.fsync(handle.fileno())
        os.replace(temporary, target)
    except BaseException:
        Path(temporary).unlink(missing_ok=True)
        raise


def atomic_write_json(path: str | os.PathLike[str], value: Any) -> None:
    """Write `value` as indented JSON to `path` atomically."""
    text = json.dumps(value, indent=2, sort_keys=True) + "\n"
    with atomic_open(path) as handle:
        handle.write(text.encode("utf-8"))


def prepare_output_dir(path: str | os.PathLike[str], option: str = "--out") -> Path:
    """Create the output folder if needed and check that files can be written in it.

    `option` is the command-line option that named the folder, for the error message.

    The check creates and removes one temporary file, so it also catches read-only file
    systems and permissions that `os.access` misreports.

    Raises:
        UsageError: If the folder cannot be created or written.
    """
    folder = Path(path)
    if folder.exists() and not folder.is_dir():
        raise UsageError(
            f"the output folder {option} {str(folder)!r} is an existing file, not a folder. "
            f"Pass {option} with a folder path."
        )
    try:
        os.makedirs(folder, exist_ok=True)
        descriptor, probe = tempfile.mkstemp(dir=folder, prefix=".write-check.", suffix=".tmp")
        os.close(descriptor)
        os.unlink(probe)
    except OSError as error:
        reason = error.strerror or str(error)
        raise UsageError(
            f"cannot write to the output folder {option} {str(folder)!r}: {reason}. "
            f"Pass {option} with a folder you can write to."
        ) from None
    return folder
