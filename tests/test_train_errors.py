"""examples/train.py on invalid input: exit status 2, one message on stderr, no outputs."""

import copy
import gzip
import json
import math
import struct
import subprocess
import sys
from pathlib import Path

import pytest
import torch

pytest.importorskip("nflows")
pytest.importorskip("sklearn")
pytest.importorskip("matplotlib")
pytest.importorskip("tqdm")

EXAMPLES = Path(__file__).resolve().parents[1] / "examples"
SCRIPT = EXAMPLES / "train.py"
sys.path.insert(0, str(EXAMPLES))

import train  # noqa: E402
from flowext._numerics import resolvable_bins  # noqa: E402

FAST = ["--epochs", "1", "--steps-per-epoch", "1", "--num-layers", "1", "--hidden-channels", "4", "--no-progress"]


def write_idx(path, magic=0x00000803, count=4, rows=4, columns=4, pixel_bytes=None):
    """Write an IDX header and `pixel_bytes` (by default the number the header promises)."""
    if pixel_bytes is None:
        pixel_bytes = count * rows * columns
    path.write_bytes(struct.pack(">IIII", magic, count, rows, columns) + bytes(pixel_bytes))
    return path


def run_with_error(argv, out, capsys):
    """Run the program in this process; return (exit status, stderr) and check that `out` was not created."""
    try:
        status = train.main([*FAST, *argv, "--device", "cpu", "--out", str(out)])
    except SystemExit as exit_info:
        status = exit_info.code
    error = capsys.readouterr().err
    assert not out.exists(), f"{out} was created"
    return status, error


def test_missing_idx_file(tmp_path, capsys):
    status, error = run_with_error(["--idx-images", str(tmp_path / "absent-idx3-ubyte")], tmp_path / "out", capsys)

    assert status == 2
    assert "absent-idx3-ubyte" in error
    assert "file not found" in error


def test_idx_label_file_magic(tmp_path, capsys):
    path = tmp_path / "labels-idx1-ubyte"
    path.write_bytes(struct.pack(">II", 0x00000801, 4) + bytes(4))

    status, error = run_with_error(["--idx-images", str(path)], tmp_path / "out", capsys)

    assert status == 2
    assert "invalid magic number 0x00000801" in error
    assert "expected 0x00000803" in error


def test_idx_wrong_magic(tmp_path, capsys):
    path = write_idx(tmp_path / "images.bin", magic=0x12345678)

    status, error = run_with_error(["--idx-images", str(path)], tmp_path / "out", capsys)

    assert status == 2
    assert "invalid magic number 0x12345678" in error


def test_idx_truncated_pixels(tmp_path, capsys):
    path = write_idx(tmp_path / "images-idx3-ubyte", count=10, pixel_bytes=100)

    status, error = run_with_error(["--idx-images", str(path)], tmp_path / "out", capsys)

    assert status == 2
    assert "truncated" in error
    assert "(160 bytes after the 16-byte header), but 100 bytes follow" in error


def test_idx_truncated_header(tmp_path, capsys):
    path = tmp_path / "images-idx3-ubyte"
    path.write_bytes(b"\x00\x00\x08\x03\x00")

    status, error = run_with_error(["--idx-images", str(path)], tmp_path / "out", capsys)

    assert status == 2
    assert "5 bytes long, shorter than the 16-byte header" in error


def test_idx_too_few_images(tmp_path, capsys):
    path = write_idx(tmp_path / "images-idx3-ubyte", count=2)

    status, error = run_with_error(["--idx-images", str(path)], tmp_path / "out", capsys)

    assert status == 2
    assert "contains 2 images" in error


def damage_gzip(data, damage):
    """Return gzip-compressed `data` with one kind of damage."""
    compressed = bytearray(gzip.compress(data))
    if damage == "stream":
        # Inverting bytes just after the 10-byte header makes the deflate stream invalid.
        for index in range(10, 30):
            compressed[index] ^= 0xFF
    elif damage == "truncated":
        del compressed[len(compressed) // 2 :]
    elif damage == "crc":
        compressed[-8] ^= 0x01  # the CRC-32 of the uncompressed data
    return bytes(compressed)


@pytest.mark.parametrize(
    ("damage", "problem"),
    [
        ("stream", "the file is corrupt: its gzip data are invalid (Error -3 while decompressing data"),
        ("truncated", "the file is truncated: its gzip stream ends early"),
        ("crc", "the file is corrupt: its gzip data are invalid (CRC check failed)"),
    ],
)
def test_idx_damaged_gzip(tmp_path, capsys, damage, problem):
    header = struct.pack(">IIII", 0x00000803, 30, 6, 6)
    path = tmp_path / "images-idx3-ubyte.gz"
    path.write_bytes(damage_gzip(header + bytes(range(256)) * 4 + bytes(30 * 36 - 1024), damage))

    status, error = run_with_error(["--idx-images", str(path)], tmp_path / "out", capsys)

    assert status == 2
    assert problem in error
    assert "Copy or download the file again, or pass the uncompressed IDX file." in error
    assert "permissions" not in error
    assert len(error.strip().splitlines()) == 1


def test_values_above_num_bins(tmp_path, capsys):
    status, error = run_with_error(["--num-bins", "10"], tmp_path / "out", capsys)

    assert status == 2
    assert "outside {0, ..., 9} for --num-bins 10" in error
    assert "Pass --num-bins 17 or more" in error


def test_num_bins_above_float32_limit(tmp_path, capsys):
    limit = resolvable_bins(torch.float32)

    status, error = run_with_error(["--num-bins", str(limit + 1)], tmp_path / "out", capsys)

    assert status == 2
    assert f"--num-bins: expected an integer from 2 to {limit}, got {limit + 1}" in error
    assert "float32" in error
    assert f"Quantize the data to at most {limit} levels" in error
    assert "Use torch.float32" not in error


def test_num_bins_at_float32_limit_trains(tmp_path, capsys):
    out = tmp_path / "out"

    status = train.main([*FAST, "--num-bins", str(resolvable_bins(torch.float32)), "--iw-samples", "2", "--device", "cpu", "--out", str(out)])

    assert status == 0, capsys.readouterr().err
    assert (out / "metrics.json").is_file()


def test_output_folder_under_a_file(tmp_path, capsys):
    blocker = tmp_path / "file.txt"
    blocker.write_text("not a folder")

    status, error = run_with_error([], blocker / "run", capsys)

    assert status == 2
    assert "cannot write to the output folder" in error
    assert blocker.read_text() == "not a folder"


def test_output_folder_is_a_file(tmp_path, capsys):
    blocker = tmp_path / "file.txt"
    blocker.write_text("not a folder")

    status = train.main([*FAST, "--device", "cpu", "--out", str(blocker)])

    assert status == 2
    assert "is an existing file, not a folder" in capsys.readouterr().err
    assert blocker.read_text() == "not a folder"


@pytest.mark.parametrize(
    ("argv", "message"),
    [
        (["--dequantization", "gaussian"], "argument --dequantization: invalid choice: 'gaussian'"),
        (["--dataset", "cifar"], "argument --dataset: invalid choice: 'cifar'"),
        (["--epochs", "0"], "argument --epochs: expected an integer >= 1, got 0"),
        (["--lr", "-1"], "argument --lr: expected a positive number up to 3.4e+37, got '-1'"),
        (["--lr", "4e37"], "argument --lr: expected a positive number up to 3.4e+37, got '4e37'"),
        (["--seed", str(2**32)], f"argument --seed: expected an integer from 0 to {2**32 - 1}, got {2**32}"),
        (["--alpha", "1"], "argument --alpha: expected a number in [0, 1), got '1'"),
        (["--alpha", "0.99999"], "float32 resolves at most 2 levels after a Logit with this alpha"),
        (["--alpha", "0.9999999"], "--alpha 0.9999999 is too close to 1"),
        (["--batch-size", "many"], "argument --batch-size: expected an integer >= 1, got 'many'"),
        (["--dataset", "photos", "--idx-images", "x"], "--idx-images applies to --dataset idx only"),
        (["--dataset", "idx"], "--dataset idx needs --idx-images PATH"),
        (["--no-such-option"], "unrecognized arguments: --no-such-option"),
        (["--threads", str(train.MAX_THREADS + 1)], f"argument --threads: expected an integer from 1 to {train.MAX_THREADS}"),
        (["--threads", "0"], "argument --threads: expected an integer >= 1, got 0"),
        (["--digest-dir", ""], "argument --digest-dir: expected a folder path, got an empty string"),
    ],
    ids=[
        "dequantization", "dataset", "epochs", "lr", "lr-overflow", "seed-too-large", "alpha", "alpha-too-large-for-k", "alpha-too-close-to-1", "batch-size", "idx-conflict", "idx-missing",
        "unknown", "threads-too-many", "threads-zero", "digest-dir-empty",
    ],
)
def test_invalid_option_values(tmp_path, capsys, argv, message):
    status, error = run_with_error(argv, tmp_path / "out", capsys)

    assert status == 2
    assert message in error


def test_empty_output_folder(tmp_path, capsys, monkeypatch):
    monkeypatch.chdir(tmp_path)

    with pytest.raises(SystemExit) as exit_info:
        train.main([*FAST, "--device", "cpu", "--out", ""])

    assert exit_info.value.code == 2
    assert "argument --out: expected a folder path, got an empty string" in capsys.readouterr().err
    assert list(tmp_path.iterdir()) == []


@pytest.mark.skipif(torch.cuda.is_available(), reason="CUDA is available here")
def test_cuda_requested_without_cuda(tmp_path, capsys):
    status = train.main([*FAST, "--device", "cuda", "--out", str(tmp_path / "out")])

    assert status == 2
    assert "--device cuda: CUDA is not available" in capsys.readouterr().err
    assert not (tmp_path / "out").exists()


def test_resume_missing_checkpoint(tmp_path, capsys):
    status, error = run_with_error(["--resume", str(tmp_path / "absent.pt")], tmp_path / "out", capsys)

    assert status == 2
    assert "absent.pt" in error
    assert "file not found" in error


@pytest.mark.parametrize(
    "content",
    [b"PK\x03\x04 this is not a checkpoint", bytes(range(256)) * 4, b"plain text\n", b""],
    ids=["bad-zip", "binary", "text", "empty"],
)
def test_resume_corrupt_checkpoint(tmp_path, capsys, content):
    path = tmp_path / "checkpoint_last.pt"
    path.write_bytes(content)

    status, error = run_with_error(["--resume", str(path)], tmp_path / "out", capsys)

    assert status == 2
    assert "is not a checkpoint written by train.py" in error
    assert "corrupt, truncated or of another format" in error
    assert "weights_only" not in error
    assert len(error.strip().splitlines()) == 1


@pytest.fixture(scope="module")
def checkpoint_file(tmp_path_factory):
    """A checkpoint_last.pt of one epoch, written by a FAST run."""
    out = tmp_path_factory.mktemp("first") / "run"
    assert train.main([*FAST, "--iw-samples", "2", "--device", "cpu", "--out", str(out)]) == 0
    return out / "checkpoint_last.pt"


def first_tensor_of_rank_2(state):
    return next(name for name, tensor in state.items() if tensor.dim() >= 2)


def drop_first_entry(checkpoint):
    checkpoint["model"].pop(next(iter(checkpoint["model"])))


def reshape_weight(checkpoint):
    checkpoint["model"][first_tensor_of_rank_2(checkpoint["model"])] = torch.zeros(3, 3)


def add_parameter_group(checkpoint):
    groups = checkpoint["optimizer"]["param_groups"]
    groups.append(dict(groups[0]))


def reshape_adam_moment(checkpoint):
    checkpoint["optimizer"]["state"][0]["exp_avg"] = torch.zeros(7)


def break_adam_betas(checkpoint):
    checkpoint["optimizer"]["param_groups"][0]["betas"] = "x"


def nan_weight(checkpoint):
    checkpoint["model"][first_tensor_of_rank_2(checkpoint["model"])][0, 0] = math.nan


def integer_weight(checkpoint):
    name = first_tensor_of_rank_2(checkpoint["model"])
    checkpoint["model"][name] = checkpoint["model"][name].to(torch.int64)


def negative_adam_moment(checkpoint):
    checkpoint["optimizer"]["state"][0]["exp_avg_sq"] = -checkpoint["optimizer"]["state"][0]["exp_avg_sq"] - 1


def nan_adam_betas(checkpoint):
    checkpoint["optimizer"]["param_groups"][0]["betas"] = (math.nan, 0.999)


@pytest.mark.parametrize(
    ("damage", "problem"),
    [
        (drop_first_entry, "its 'model' state dict does not fit the model of its 'config': 1 missing entry"),
        (reshape_weight, "1 reshaped entry"),
        (lambda c: c.__setitem__("best_model", {"extra": torch.zeros(1)}), "1 unknown entry ('extra')"),
        (lambda c: c.__setitem__("config", "nonsense"), "'config' is 'nonsense', not a dictionary"),
        (lambda c: c["config"].pop("alpha"), "'config' has missing fields ['alpha']"),
        (lambda c: c.__setitem__("epoch", "five"), "'epoch' is 'five', not an integer >= 1"),
        (lambda c: c.__setitem__("best_epoch", 7), "'best_epoch' is 7, not an integer from 0 to 'epoch' (1)"),
        (lambda c: c.__setitem__("history", None), "'history' is None, not a dictionary"),
        (lambda c: c["history"]["train_bpd"].append(1.0), "'history' entry 'train_bpd' is not a list of 1 numbers"),
        (lambda c: c.__setitem__("train_seconds", "long"), "'train_seconds' is 'long', not a finite number"),
        (lambda c: c.__setitem__("model", [1, 2]), "'model' is not a state dict"),
        (lambda c: c.__setitem__("optimizer", {"state": {}}), "'optimizer' is not an optimizer state dict"),
        (add_parameter_group, "its 'optimizer' state dict does not fit the model (loaded state dict has a different number of parameter groups)"),
        (reshape_adam_moment, "the 'optimizer' state 'exp_avg' does not have the shape of its parameter"),
        (break_adam_betas, "its 'optimizer' state cannot be used for a step"),
        (nan_weight, "contains NaN or infinite values"),
        (integer_weight, "has dtype torch.int64, not torch.float32"),
        (negative_adam_moment, "the 'optimizer' state 'exp_avg_sq' contains negative values"),
        (nan_adam_betas, "the 'optimizer' setting 'betas' is NaN or infinite"),
        (lambda c: c.__setitem__("best_validation_bpd", math.nan), "'best_validation_bpd' is nan, not a finite number >= 0"),
        (lambda c: c.__setitem__("best_validation_bpd", math.inf), "'best_validation_bpd' is inf, not a finite number >= 0"),
        (lambda c: c["history"]["validation_bpd"].__setitem__(0, math.nan), "'history' entry 'validation_bpd' contains NaN or infinite values"),
        (lambda c: c["optimizer"]["param_groups"][0].__setitem__("betas", (1.5, 0.999)), "'betas' is (1.5, 0.999), not two numbers in [0, 1)"),
        (lambda c: c["optimizer"]["state"][0].__setitem__("step", torch.tensor(-3.0)), "the 'optimizer' state 'step' is not a finite number >= 0"),
    ],
    ids=[
        "missing-entry", "reshaped-entry", "unknown-entry", "config-string", "config-field", "epoch-string",
        "best-epoch", "history-none", "history-length", "train-seconds", "model-list", "optimizer-keys",
        "optimizer-groups", "adam-moment", "adam-betas", "nan-weight", "integer-weight", "negative-moment",
        "nan-betas", "nan-best-bpd", "inf-best-bpd", "nan-history", "betas-above-1", "negative-step",
    ],
)
def test_resume_damaged_checkpoint(tmp_path, capsys, checkpoint_file, damage, problem):
    checkpoint = copy.deepcopy(torch.load(checkpoint_file, weights_only=True))
    damage(checkpoint)
    path = tmp_path / "damaged.pt"
    torch.save(checkpoint, path)

    status, error = run_with_error(["--epochs", "2", "--resume", str(path)], tmp_path / "out", capsys)

    assert status == 2
    assert "is not a valid checkpoint of train.py" in error
    assert problem in error
    assert len(error.strip().splitlines()) == 1


def test_resume_with_fewer_epochs_than_the_checkpoint(tmp_path, capsys, checkpoint_file):
    two_epochs = tmp_path / "two"
    assert train.main([*FAST, "--epochs", "2", "--iw-samples", "2", "--device", "cpu", "--resume", str(checkpoint_file), "--out", str(two_epochs)]) == 0
    capsys.readouterr()

    status, error = run_with_error(["--epochs", "1", "--resume", str(two_epochs / "checkpoint_last.pt")], tmp_path / "out", capsys)

    assert status == 2
    assert "already has 2 epochs, more than --epochs 1" in error
    assert "Pass --epochs 2 to evaluate it without training" in error


def test_resume_with_all_epochs_done_only_evaluates(tmp_path, capsys, checkpoint_file):
    # A run stopped after its last epoch finishes with the same options.
    out = tmp_path / "out"

    status = train.main([*FAST, "--iw-samples", "2", "--device", "cpu", "--resume", str(checkpoint_file), "--out", str(out)])

    assert status == 0
    metrics = json.loads((out / "metrics.json").read_text())
    assert metrics["epochs"] == 1
    assert len(metrics["history"]["train_bpd"]) == 1
    assert not (out / "checkpoint_last.pt").exists()


def test_model_broken_by_the_last_step_exits_1(tmp_path):
    # One step: its loss is finite, and its update with a huge learning rate breaks the model.
    result = subprocess.run(
        [sys.executable, str(SCRIPT), *FAST, "--lr", "1e30", "--iw-samples", "2", "--out", str(tmp_path / "out"), "--device", "cpu", "--threads", "1"],
        check=False, capture_output=True, text=True, timeout=120,
    )

    assert result.returncode == 1, result.stderr
    assert result.stderr.strip().splitlines()[-1].startswith("train.py: error: the validation bpd became")
    assert not (tmp_path / "out" / "metrics.json").exists()


def test_diverging_training_exits_1(tmp_path):
    result = subprocess.run(
        [sys.executable, str(SCRIPT), *FAST, "--steps-per-epoch", "3", "--lr", "1e30", "--out", str(tmp_path / "out"), "--device", "cpu", "--threads", "1"],
        check=False, capture_output=True, text=True, timeout=120,
    )

    assert result.returncode == 1
    assert result.stderr.strip().splitlines()[-1].startswith("train.py: error: the training loss became")
    assert "Traceback" not in result.stderr


def test_resume_foreign_file(tmp_path, capsys):
    path = tmp_path / "weights.pt"
    torch.save({"weight": torch.zeros(2)}, path)

    status, error = run_with_error(["--resume", str(path)], tmp_path / "out", capsys)

    assert status == 2
    assert "is not a checkpoint of train.py" in error


def test_exit_status_and_stderr_in_subprocess(tmp_path):
    path = write_idx(tmp_path / "images.bin", magic=0x00000801)
    out = tmp_path / "out"

    result = subprocess.run(
        [sys.executable, str(SCRIPT), *FAST, "--idx-images", str(path), "--out", str(out), "--device", "cpu"],
        capture_output=True, text=True, timeout=120,
    )

    assert result.returncode == 2
    assert result.stdout == ""
    error_lines = result.stderr.strip().splitlines()
    assert len(error_lines) == 1
    assert error_lines[0].startswith("train.py: error: --idx-images")
    assert "invalid magic number 0x00000801" in error_lines[0]
    assert not out.exists()
