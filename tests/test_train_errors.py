"""examples/train.py on invalid input: exit status 2, one message on stderr, no outputs."""

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


def test_values_above_num_bins(tmp_path, capsys):
    status, error = run_with_error(["--num-bins", "10"], tmp_path / "out", capsys)

    assert status == 2
    assert "outside {0, ..., 9} for --num-bins 10" in error
    assert "Pass --num-bins 17 or more" in error


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
        (["--lr", "-1"], "argument --lr: expected a positive finite number, got '-1'"),
        (["--alpha", "1"], "argument --alpha: expected a number in [0, 1), got '1'"),
        (["--batch-size", "many"], "argument --batch-size: expected an integer >= 1, got 'many'"),
        (["--dataset", "photos", "--idx-images", "x"], "--idx-images applies to --dataset idx only"),
        (["--dataset", "idx"], "--dataset idx needs --idx-images PATH"),
        (["--no-such-option"], "unrecognized arguments: --no-such-option"),
    ],
    ids=["dequantization", "dataset", "epochs", "lr", "alpha", "batch-size", "idx-conflict", "idx-missing", "unknown"],
)
def test_invalid_option_values(tmp_path, capsys, argv, message):
    status, error = run_with_error(argv, tmp_path / "out", capsys)

    assert status == 2
    assert message in error


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


def test_resume_corrupt_checkpoint(tmp_path, capsys):
    path = tmp_path / "checkpoint_last.pt"
    path.write_bytes(b"PK\x03\x04 this is not a checkpoint")

    status, error = run_with_error(["--resume", str(path)], tmp_path / "out", capsys)

    assert status == 2
    assert "cannot load the checkpoint" in error


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
