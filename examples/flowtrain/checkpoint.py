"""Checkpoints: plain dictionaries of tensors and Python values, written atomically.

A checkpoint loads with `torch.load(path, weights_only=True)`. It holds:

- "format_version": 1
- "config": the `FlowConfig` as a dictionary, and "dataset": the data set's name
- "model": the flow's state dict at the end of "epoch"
- "best_model": the state dict of the epoch with the lowest validation bits per dimension
- "optimizer": Adam's state dict at the end of "epoch"
- "epoch": the number of completed epochs
- "best_epoch" and "best_validation_bpd": which epoch was best, and its validation bpd
- "history": lists "train_bpd", "validation_bpd" and "epoch_seconds", one entry per epoch
- "train_seconds": the training time of all epochs so far, resumed runs included
"""

from __future__ import annotations

import pickle
import zipfile
from pathlib import Path
from typing import Any

import torch

from flowtrain.errors import UsageError
from flowtrain.files import atomic_open
from flowtrain.model import FlowConfig

__all__ = ["FORMAT_VERSION", "check_compatible", "load_checkpoint", "save_checkpoint"]

FORMAT_VERSION = 1

_REQUIRED_KEYS = (
    "format_version",
    "config",
    "dataset",
    "model",
    "best_model",
    "optimizer",
    "epoch",
    "best_epoch",
    "best_validation_bpd",
    "history",
    "train_seconds",
)


def save_checkpoint(path: str | Path, checkpoint: dict[str, Any]) -> None:
    """Write a checkpoint dictionary to `path` atomically."""
    with atomic_open(path) as handle:
        torch.save(checkpoint, handle)


def load_checkpoint(path: str | Path) -> dict[str, Any]:
    """Load a checkpoint onto the CPU with `weights_only=True`.

    Raises:
        UsageError: If the file is missing, unreadable, not a checkpoint of this program or of
            another format version.
    """
    where = f"--resume {str(path)!r}"
    try:
        checkpoint = torch.load(path, map_location="cpu", weights_only=True)
    except FileNotFoundError:
        raise UsageError(f"{where}: file not found. Pass a checkpoint_best.pt or checkpoint_last.pt that train.py wrote.") from None
    except IsADirectoryError:
        raise UsageError(f"{where} is a folder. Pass the checkpoint file inside it, such as checkpoint_last.pt.") from None
    except (OSError, RuntimeError, pickle.UnpicklingError, zipfile.BadZipFile, EOFError) as error:
        first_line = str(error).strip().splitlines()[0] if str(error).strip() else type(error).__name__
        raise UsageError(
            f"{where}: cannot load the checkpoint ({first_line}). The file is corrupt or was not "
            f"written by train.py; pass another checkpoint or train without --resume."
        ) from None

    if not isinstance(checkpoint, dict) or any(key not in checkpoint for key in _REQUIRED_KEYS):
        raise UsageError(f"{where} is not a checkpoint of train.py (keys are missing). Pass a checkpoint that train.py wrote.")
    if checkpoint["format_version"] != FORMAT_VERSION:
        raise UsageError(
            f"{where} has format version {checkpoint['format_version']!r}; this program reads "
            f"version {FORMAT_VERSION}. Train again without --resume."
        )
    return checkpoint


def check_compatible(checkpoint: dict[str, Any], config: FlowConfig, dataset: str, where: str) -> None:
    """Check that the checkpoint was trained on `dataset` with the architecture in `config`.

    Raises:
        UsageError: Naming each option whose value differs from the checkpoint's.
    """
    if checkpoint["dataset"] != dataset:
        raise UsageError(
            f"{where} was trained on the data set {checkpoint['dataset']!r}, not {dataset!r}. "
            f"Pass the same data options as the run that wrote it."
        )
    stored = checkpoint["config"]
    current = config.to_dict()
    differences = []
    for key, value in current.items():
        if stored.get(key) != value:
            name = "image shape" if key == "shape" else f"--{key.replace('_', '-')}"
            differences.append(f"{name} {stored.get(key)!r} (here {value!r})")
    if differences:
        raise UsageError(
            f"{where} was trained with a different model: {', '.join(differences)}. Pass the "
            f"same model options as the run that wrote it."
        )
