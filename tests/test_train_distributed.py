"""examples/train.py under torchrun: 2 CPU processes with DDP end with identical parameters."""

import json
import os
import socket
import struct
import subprocess
import sys
from pathlib import Path

import pytest
import torch
import torch.distributed

pytest.importorskip("nflows")
pytest.importorskip("matplotlib")
pytest.importorskip("tqdm")
if not torch.distributed.is_available() or not torch.distributed.is_gloo_available():
    pytest.skip("this PyTorch build has no Gloo back end", allow_module_level=True)

SCRIPT = Path(__file__).resolve().parents[1] / "examples" / "train.py"


def free_port():
    """Return a TCP port that is free on 127.0.0.1 now."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]


def write_idx(path, images):
    count, rows, columns = images.shape
    path.write_bytes(struct.pack(">IIII", 0x00000803, count, rows, columns) + images.to(torch.uint8).numpy().tobytes())
    return path


def test_two_processes_agree(tmp_path):
    generator = torch.Generator().manual_seed(0)
    data = write_idx(tmp_path / "images-idx3-ubyte", torch.randint(0, 256, (80, 6, 6), generator=generator))
    out, digests = tmp_path / "run", tmp_path / "digests"
    command = [
        sys.executable, "-m", "torch.distributed.run",
        "--nnodes", "1", "--nproc_per_node", "2",
        "--master_addr", "127.0.0.1", "--master_port", str(free_port()),
        str(SCRIPT),
        "--idx-images", str(data), "--device", "cpu",
        "--num-layers", "2", "--hidden-channels", "8",
        "--epochs", "1", "--steps-per-epoch", "3", "--batch-size", "8",
        "--iw-samples", "2", "--num-sample-images", "4", "--no-progress",
        "--out", str(out), "--digest-dir", str(digests),
    ]
    environment = {**os.environ, "OMP_NUM_THREADS": "1"}

    result = subprocess.run(command, capture_output=True, text=True, timeout=240, env=environment)

    assert result.returncode == 0, result.stderr[-4000:]
    rank0 = (digests / "rank0.sha256").read_text().strip()
    rank1 = (digests / "rank1.sha256").read_text().strip()
    assert len(rank0) == 64
    assert rank0 == rank1
    metrics = json.loads((out / "metrics.json").read_text())
    assert metrics["world_size"] == 2
    assert metrics["epochs"] == 1
    assert (out / "checkpoint_best.pt").exists()
