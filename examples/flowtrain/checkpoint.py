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

import copy
import dataclasses
import math
import reprlib
import warnings
from pathlib import Path
from typing import Any

import torch

from flowtrain.errors import UsageError
from flowtrain.files import atomic_open
from flowtrain.model import FlowConfig, build_flow

__all__ = [
    "FORMAT_VERSION",
    "check_compatible",
    "check_epochs",
    "check_states",
    "load_checkpoint",
    "restore_states",
    "save_checkpoint",
]

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

HISTORY_KEYS = ("train_bpd", "validation_bpd", "epoch_seconds")

# Adam's per-parameter state tensors, which have the parameter's shape.
_ADAM_MOMENTS = ("exp_avg", "exp_avg_sq", "max_exp_avg_sq")

# Names listed in a message about mismatched state dict entries, at most.
_NAMES_SHOWN = 3


def save_checkpoint(path: str | Path, checkpoint: dict[str, Any]) -> None:
    """Write a checkpoint dictionary to `path` atomically."""
    with atomic_open(path) as handle:
        torch.save(checkpoint, handle)


def _damaged(where: str, problem: str) -> UsageError:
    return UsageError(
        f"{where} is not a valid checkpoint of train.py: {problem}. The file is damaged or was "
        f"written by another program; pass a checkpoint that train.py wrote, or train without --resume."
    )


def load_checkpoint(path: str | Path) -> dict[str, Any]:
    """Load a checkpoint onto the CPU with `weights_only=True` and check the type of every field.

    The state dicts are checked against the model only by `check_states`.

    Raises:
        UsageError: If the file is missing or unreadable, is not a checkpoint of this program,
            has another format version, or a field has the wrong type or an invalid value.
    """
    where = f"--resume {str(path)!r}"
    try:
        with warnings.catch_warnings():
            # A file from elsewhere can make torch.load warn, for example about its pickle
            # protocol; a failure is reported below in one message instead.
            warnings.simplefilter("ignore")
            checkpoint = torch.load(path, map_location="cpu", weights_only=True)
    except FileNotFoundError:
        raise UsageError(f"{where}: file not found. Pass a checkpoint_best.pt or checkpoint_last.pt that train.py wrote.") from None
    except IsADirectoryError:
        raise UsageError(f"{where} is a folder. Pass the checkpoint file inside it, such as checkpoint_last.pt.") from None
    except PermissionError:
        raise UsageError(f"{where}: permission denied. Check the file's permissions.") from None
    except OSError as error:
        raise UsageError(f"{where}: cannot read the file ({error.strerror or error}). Check the path and the disk.") from None
    except Exception:  # noqa: BLE001
        # torch.load parses arbitrary bytes here, and its zip reader and its restricted
        # unpickler raise many exception types (RuntimeError, UnpicklingError, EOFError,
        # KeyError, ...) for a file it cannot read. Their text often advises weights_only=False,
        # which would run arbitrary code from the file, so it is left out.
        raise UsageError(
            f"{where} is not a checkpoint written by train.py: torch.load cannot read it, so the "
            f"file is corrupt, truncated or of another format. Pass a checkpoint_best.pt or "
            f"checkpoint_last.pt that train.py wrote, or train without --resume."
        ) from None

    if not isinstance(checkpoint, dict) or any(key not in checkpoint for key in _REQUIRED_KEYS):
        raise UsageError(f"{where} is not a checkpoint of train.py (keys are missing). Pass a checkpoint that train.py wrote.")
    version = checkpoint["format_version"]
    if type(version) is not int or version != FORMAT_VERSION:
        raise UsageError(
            f"{where} has format version {reprlib.repr(version)}; this program reads "
            f"version {FORMAT_VERSION}. Train again without --resume."
        )
    _check_fields(checkpoint, where)
    return checkpoint


def _is_integer(value: Any) -> bool:
    return isinstance(value, int) and not isinstance(value, bool)


def _is_number(value: Any) -> bool:
    return isinstance(value, (int, float)) and not isinstance(value, bool)


def _is_state_dict(value: Any) -> bool:
    return isinstance(value, dict) and all(
        isinstance(name, str) and isinstance(tensor, torch.Tensor) for name, tensor in value.items()
    )


def _check_fields(checkpoint: dict[str, Any], where: str) -> None:
    """Check the type and range of every field of a checkpoint, except the state dicts' contents.

    Messages show values through `reprlib.repr`, which shortens long ones.
    """
    config = checkpoint["config"]
    config_fields = {field.name for field in dataclasses.fields(FlowConfig)}
    if not isinstance(config, dict):
        raise _damaged(where, f"'config' is {reprlib.repr(config)}, not a dictionary")
    if set(config) != config_fields:
        missing = sorted(config_fields - set(config))
        unknown = sorted(map(str, set(config) - config_fields))
        problems = [f"{kind} fields {names}" for kind, names in (("missing", missing), ("unknown", unknown)) if names]
        raise _damaged(where, f"'config' has {' and '.join(problems)}")

    if not isinstance(checkpoint["dataset"], str):
        raise _damaged(where, f"'dataset' is a {type(checkpoint['dataset']).__name__}, not a string")

    epoch = checkpoint["epoch"]
    if not _is_integer(epoch) or epoch < 1:
        raise _damaged(where, f"'epoch' is {reprlib.repr(epoch)}, not an integer >= 1")
    best_epoch = checkpoint["best_epoch"]
    if not _is_integer(best_epoch) or not 0 <= best_epoch <= epoch:
        raise _damaged(where, f"'best_epoch' is {reprlib.repr(best_epoch)}, not an integer from 0 to 'epoch' ({epoch})")
    best_validation = checkpoint["best_validation_bpd"]
    # Without a best epoch it is inf, the value no epoch has beaten yet.
    expected = math.inf if best_epoch == 0 else None
    if not _is_number(best_validation) or (
        best_validation != expected and not 0 <= best_validation < math.inf
    ):
        rule = "inf, since 'best_epoch' is 0" if best_epoch == 0 else "a finite number >= 0"
        raise _damaged(where, f"'best_validation_bpd' is {reprlib.repr(best_validation)}, not {rule}")
    train_seconds = checkpoint["train_seconds"]
    if not _is_number(train_seconds) or not 0 <= train_seconds < math.inf:
        raise _damaged(where, f"'train_seconds' is {reprlib.repr(train_seconds)}, not a finite number >= 0")

    history = checkpoint["history"]
    if not isinstance(history, dict) or set(history) != set(HISTORY_KEYS):
        found = f"a dictionary with the keys {sorted(map(str, history))}" if isinstance(history, dict) else reprlib.repr(history)
        raise _damaged(where, f"'history' is {found}, not a dictionary with the lists {list(HISTORY_KEYS)}")
    for key in HISTORY_KEYS:
        values = history[key]
        if not isinstance(values, list) or len(values) != epoch or not all(map(_is_number, values)):
            raise _damaged(where, f"'history' entry {key!r} is not a list of {epoch} numbers, one per epoch")
        if not all(map(math.isfinite, values)):
            raise _damaged(where, f"'history' entry {key!r} contains NaN or infinite values")

    if not _is_state_dict(checkpoint["model"]):
        raise _damaged(where, "'model' is not a state dict (names mapped to tensors)")
    best_model = checkpoint["best_model"]
    # Without a finite validation bpd no epoch is best, and train.py stores best_model None.
    if not (_is_state_dict(best_model) or (best_model is None and best_epoch == 0)):
        raise _damaged(where, "'best_model' is not a state dict (names mapped to tensors)")

    optimizer = checkpoint["optimizer"]
    if not (
        isinstance(optimizer, dict)
        and isinstance(optimizer.get("state"), dict)
        and isinstance(optimizer.get("param_groups"), list)
        and all(isinstance(group, dict) for group in optimizer["param_groups"])
    ):
        raise _damaged(where, "'optimizer' is not an optimizer state dict with 'state' and 'param_groups'")


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
            differences.append(f"{name} {reprlib.repr(stored.get(key))} (here {value!r})")
    if differences:
        raise UsageError(
            f"{where} was trained with a different model: {', '.join(differences)}. Pass the "
            f"same model options as the run that wrote it."
        )


def check_epochs(checkpoint: dict[str, Any], epochs: int, where: str) -> None:
    """Check that `epochs`, the total the run should reach, is not below the checkpoint's epoch.

    An `epochs` equal to the checkpoint's epoch is valid: the run then trains no further and
    only evaluates, which finishes a run that was stopped after its last epoch.

    Raises:
        UsageError: If the checkpoint has more than `epochs` epochs.
    """
    done = checkpoint["epoch"]
    if epochs < done:
        raise UsageError(
            f"{where} already has {done} epoch{'' if done == 1 else 's'}, more than --epochs "
            f"{epochs}, the total that includes the resumed epochs. Pass --epochs {done} to "
            f"evaluate it without training, or more to train on."
        )


def _count_entries(names: list[str], kind: str) -> str:
    """Return, for example, "2 missing entries ('a', 'b')", naming at most `_NAMES_SHOWN`."""
    listed = ", ".join(repr(name) for name in names[:_NAMES_SHOWN])
    more = f" and {len(names) - _NAMES_SHOWN} more" if len(names) > _NAMES_SHOWN else ""
    noun = "entry" if len(names) == 1 else "entries"
    return f"{len(names)} {kind} {noun} ({listed}{more})"


def _check_state_dict(state: dict[str, torch.Tensor], model: torch.nn.Module, field: str, where: str) -> None:
    """Check that a state dict has the model's entries, each with the model's shape."""
    expected = model.state_dict()
    missing = [name for name in expected if name not in state]
    unexpected = [name for name in state if name not in expected]
    reshaped = [name for name in expected if name in state and state[name].shape != expected[name].shape]
    problems = []
    if missing:
        problems.append(_count_entries(missing, "missing"))
    if unexpected:
        problems.append(_count_entries(unexpected, "unknown"))
    if reshaped:
        first = reshaped[0]
        problems.append(
            f"{_count_entries(reshaped, 'reshaped')}: {first!r} has the shape "
            f"{list(state[first].shape)} instead of {list(expected[first].shape)}"
        )
    if problems:
        raise _damaged(where, f"its {field!r} state dict does not fit the model of its 'config': {'; '.join(problems)}")
    for name, tensor in state.items():
        if tensor.dtype != expected[name].dtype:
            raise _damaged(where, f"its {field!r} entry {name!r} has dtype {tensor.dtype}, not {expected[name].dtype}")
        if tensor.is_floating_point() and not bool(torch.isfinite(tensor).all()):
            raise _damaged(where, f"its {field!r} entry {name!r} contains NaN or infinite values")


def _check_optimizer_moments(optimizer: torch.optim.Optimizer, where: str) -> None:
    """Check that every Adam moment tensor has its parameter's shape and finite values."""
    for group in optimizer.param_groups:
        for parameter in group["params"]:
            state = optimizer.state.get(parameter, {})
            for key in _ADAM_MOMENTS:
                if key in state and (not isinstance(state[key], torch.Tensor) or state[key].shape != parameter.shape):
                    raise _damaged(where, f"the 'optimizer' state {key!r} does not have the shape of its parameter")
                if key in state and not bool(torch.isfinite(state[key]).all()):
                    raise _damaged(where, f"the 'optimizer' state {key!r} contains NaN or infinite values")
                if key.endswith("_sq") and key in state and bool((state[key] < 0).any()):
                    raise _damaged(where, f"the 'optimizer' state {key!r} contains negative values, which squares cannot be")
            step = state.get("step")
            if step is not None:
                step_value = torch.as_tensor(step).detach().to(torch.float64)
                if not bool((torch.isfinite(step_value) & (step_value >= 0)).all()):
                    raise _damaged(where, "the 'optimizer' state 'step' is not a finite number >= 0")
        for name in ("lr", "betas", "eps", "weight_decay"):
            try:
                values = torch.as_tensor(group.get(name, 0.0), dtype=torch.float64)
            except (TypeError, ValueError, RuntimeError):
                continue  # not numbers: the trial step reports it
            if not bool(torch.isfinite(values).all()):
                raise _damaged(where, f"the 'optimizer' setting {name!r} is NaN or infinite")
            if name == "betas" and not bool(((values >= 0) & (values < 1)).all()):
                raise _damaged(where, f"the 'optimizer' setting 'betas' is {group['betas']!r}, not two numbers in [0, 1)")


def restore_states(
    checkpoint: dict[str, Any], flow: torch.nn.Module, optimizer: torch.optim.Optimizer, where: str
) -> None:
    """Load the checkpoint's model and optimizer state dicts into `flow` and `optimizer`.

    Raises:
        UsageError: If a state dict does not fit `flow` or `optimizer`.
    """
    _check_state_dict(checkpoint["model"], flow, "model", where)
    if checkpoint["best_model"] is not None:
        _check_state_dict(checkpoint["best_model"], flow, "best_model", where)
    try:
        flow.load_state_dict(checkpoint["model"])
    except RuntimeError as error:
        raise _damaged(where, f"its 'model' state dict cannot be loaded ({_first_line(error)})") from None
    try:
        optimizer.load_state_dict(checkpoint["optimizer"])
    except (KeyError, TypeError, ValueError, RuntimeError) as error:
        raise _damaged(where, f"its 'optimizer' state dict does not fit the model ({_first_line(error)})") from None
    _check_optimizer_moments(optimizer, where)


def check_states(checkpoint: dict[str, Any], config: FlowConfig, lr: float, where: str) -> None:
    """Check that the checkpoint's state dicts load into a new model and optimizer and work.

    The check builds the model of `config` on the CPU, loads the state dicts and takes one
    Adam step with zero gradients, which fails on an optimizer state that loads but cannot
    be used. It leaves torch's global random state as it was.

    Raises:
        UsageError: If a state dict does not fit, or the optimizer step fails.
    """
    with torch.random.fork_rng(devices=[]):
        flow = build_flow(config)
    optimizer = torch.optim.Adam(flow.parameters(), lr=lr)
    # Adam's load_state_dict keeps the given CPU tensors as its state, and the step below
    # changes them in place, so the step works on a copy.
    trial = checkpoint | {"optimizer": copy.deepcopy(checkpoint["optimizer"])}
    restore_states(trial, flow, optimizer, where)
    for parameter in flow.parameters():
        parameter.grad = torch.zeros_like(parameter)
    try:
        optimizer.step()
    except (KeyError, TypeError, ValueError, RuntimeError) as error:
        raise _damaged(where, f"its 'optimizer' state cannot be used for a step ({_first_line(error)})") from None


def _first_line(error: BaseException) -> str:
    text = str(error).strip()
    return text.splitlines()[0] if text else type(error).__name__
