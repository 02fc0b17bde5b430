"""Atomic file writing and the writability check of the output folder."""

from __future__ import annotations

import json
import os
import secrets
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import IO, Any

from flowtrain.errors import UsageError

__all__ = ["atomic_open", "atomic_write_json", "prepare_output_dir"]

# Random 48-bit names collide almost never; the limit only stops an endless loop.
_NAME_ATTEMPTS = 100


def _new_name(folder: Path, stem: str) -> Path:
    return folder / f".{stem}.{secrets.token_hex(6)}.tmp"


@contextmanager
def _temporary_file(folder: Path, stem: str) -> Iterator[tuple[int, Path]]:
    """Create an empty file `.<stem>.<random>.tmp` in `folder`, and remove it when the block ends.

    Yields the open descriptor for writing and the path. The path is chosen before the file
    is created, so an exception that arrives at any moment after the creation, such as the
    KeyboardInterrupt or SystemExit raised by a signal handler, still finds the file to remove.
    The file permissions are 0o666 less the umask, as for files that `open` creates.
    """
    flags = os.O_WRONLY | os.O_CREAT | os.O_EXCL | getattr(os, "O_BINARY", 0)
    path: Path | None = None
    try:
        for _ in range(_NAME_ATTEMPTS):
            path = _new_name(folder, stem)
            try:
                descriptor = os.open(path, flags, 0o666)
            except FileExistsError:
                # Another file has this name; it is not ours to remove.
                path = None
                continue
            break
        else:
            raise FileExistsError(f"no free temporary file name in {str(folder)!r} after {_NAME_ATTEMPTS} attempts")
        yield descriptor, path
    finally:
        if path is not None:
            path.unlink(missing_ok=True)


@contextmanager
def atomic_open(path: str | os.PathLike[str]) -> Iterator[IO[bytes]]:
    """Open a temporary file next to `path` for binary writing, then move it onto `path`.

    The temporary file lies in the same folder, so `os.replace` renames it in one step and
    readers see either the old file or the complete new one. If the block raises any
    exception, KeyboardInterrupt and SystemExit included, the temporary file is removed and
    `path` is left as it was.
    """
    target = Path(path)
    with _temporary_file(target.parent, target.name) as (descriptor, temporary):
        with os.fdopen(descriptor, "wb") as handle:
            yield handle
            handle.flush()
            os.fsync(handle.fileno())
        os.replace(temporary, target)


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
        with _temporary_file(folder, "write-check") as (descriptor, _):
            os.close(descriptor)
    except OSError as error:
        reason = error.strerror or str(error)
        raise UsageError(
            f"cannot write to the output folder {option} {str(folder)!r}: {reason}. "
            f"Pass {option} with a folder you can write to."
        ) from None
    return folder
