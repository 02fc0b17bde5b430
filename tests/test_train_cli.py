"""examples/train.py end to end on a tiny budget: outputs, checkpoints, resume and IDX files."""

import gzip
import json
import logging
import os
import signal
import struct
import subprocess
import sys
import threading
import time
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

import compare_dequantization  # noqa: E402
import train  # noqa: E402
from flowtrain.data import read_idx_images  # noqa: E402
from flowtrain.files import atomic_open  # noqa: E402

PNG_SIGNATURE = b"\x89PNG\r\n\x1a\n"

# A model and budget small enough for a run of a few seconds.
TINY = [
    "--num-layers", "2",
    "--hidden-channels", "8",
    "--noise-layers", "1",
    "--noise-hidden-channels", "4",
    "--context-channels", "2",
    "--epochs", "1",
    "--steps-per-epoch", "2",
    "--batch-size", "16",
    "--iw-samples", "2",
    "--num-sample-images", "4",
    "--no-progress",
]

METRIC_KEYS = {
    "dataset", "num_bins", "image_shape", "num_dims", "num_images", "dequantization", "parameters",
    "epochs", "best_epoch", "best_validation_bpd", "test_bpd", "test_iw_bpd", "iw_samples",
    "train_seconds", "eval_batch_size", "eval_seconds_per_batch", "iw_eval_seconds_per_batch",
    "sample_batch_size", "sample_seconds_per_batch", "history", "config", "training", "device",
    "world_size", "torch_threads",
}


@pytest.fixture(autouse=True)
def _one_thread():
    # The models are tiny, and on a busy machine extra threads only wait for each other.
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


def write_idx(path, images, magic=0x00000803, compress=False):
    """Write uint8 images (N, H, W) as an IDX file; return the path."""
    count, rows, columns = images.shape
    data = struct.pack(">IIII", magic, count, rows, columns) + images.to(torch.uint8).numpy().tobytes()
    path.write_bytes(gzip.compress(data) if compress else data)
    return path


def run_main(argv):
    """Run the program in this process; return its exit status."""
    return train.main([*argv, "--device", "cpu"])


def test_help_explains_every_option(capsys):
    with pytest.raises(SystemExit) as exit_info:
        train.main(["--help"])

    help_text = capsys.readouterr().out
    assert exit_info.value.code == 0
    for action in train.build_parser()._actions:
        for option in action.option_strings:
            assert option in help_text
        assert action.help
    for unit in ("pixels", "images per optimization step", "noise draws M", "Adam learning rate"):
        assert unit in help_text


def test_variational_run_writes_outputs(tmp_path):
    out = tmp_path / "run"
    result = subprocess.run(
        [sys.executable, str(SCRIPT), *TINY, "--dequantization", "variational", "--out", str(out),
         "--device", "cpu", "--threads", "1"],
        capture_output=True, text=True, timeout=180,
    )

    assert result.returncode == 0, result.stderr
    assert "variational dequantization: test" in result.stdout
    metrics = json.loads((out / "metrics.json").read_text())
    assert METRIC_KEYS <= set(metrics)
    assert metrics["dequantization"] == "variational"
    assert metrics["num_bins"] == 17
    assert metrics["image_shape"] == [1, 8, 8]
    assert metrics["parameters"]["dequantizer"] > 0
    assert metrics["parameters"]["total"] == metrics["parameters"]["flow"] + metrics["parameters"]["dequantizer"]
    assert 0 < metrics["test_bpd"] < 10
    assert 0 < metrics["test_iw_bpd"] < 10
    assert len(metrics["history"]["validation_bpd"]) == 1
    for name in ("samples.png", "dequantization.png", "training_curve.png"):
        assert (out / name).read_bytes()[:8] == PNG_SIGNATURE, name
    assert not list(out.glob(".*.tmp"))

    checkpoint = torch.load(out / "checkpoint_best.pt", weights_only=True)
    assert checkpoint["epoch"] == 1
    assert checkpoint["config"]["dequantization"] == "variational"
    assert "noise_flow" in " ".join(checkpoint["model"])
    assert checkpoint["optimizer"]["state"]


def test_uniform_run_has_no_dequantizer_parameters(tmp_path):
    out = tmp_path / "run"

    assert run_main([*TINY, "--out", str(out)]) == 0

    metrics = json.loads((out / "metrics.json").read_text())
    assert metrics["dequantization"] == "uniform"
    assert metrics["parameters"]["dequantizer"] == 0
    assert metrics["world_size"] == 1


def test_new_run_into_a_used_folder_warns(tmp_path, caplog):
    out = tmp_path / "run"
    assert run_main([*TINY, "--out", str(out)]) == 0
    caplog.clear()

    with caplog.at_level(logging.WARNING):
        assert run_main([*TINY, "--out", str(out)]) == 0

    assert any("contains the outputs of an earlier run" in record.getMessage() for record in caplog.records)


def test_resume_matches_uninterrupted_run(tmp_path):
    two_epochs = [*TINY, "--epochs", "2", "--dequantization", "variational"]
    straight, first, resumed = tmp_path / "straight", tmp_path / "first", tmp_path / "resumed"

    assert run_main([*two_epochs, "--out", str(straight)]) == 0
    assert run_main([*two_epochs, "--epochs", "1", "--out", str(first)]) == 0
    assert run_main([*two_epochs, "--resume", str(first / "checkpoint_last.pt"), "--out", str(resumed)]) == 0

    expected = torch.load(straight / "checkpoint_last.pt", weights_only=True)
    actual = torch.load(resumed / "checkpoint_last.pt", weights_only=True)
    assert actual["epoch"] == 2
    assert len(actual["history"]["train_bpd"]) == 2
    assert actual["history"]["train_bpd"] == pytest.approx(expected["history"]["train_bpd"])
    assert actual["model"].keys() == expected["model"].keys()
    for name, tensor in expected["model"].items():
        assert torch.equal(actual["model"][name], tensor), name
    assert actual["optimizer"]["state"].keys() == expected["optimizer"]["state"].keys()


def test_resume_rejects_other_model(tmp_path, capsys):
    first = tmp_path / "first"
    assert run_main([*TINY, "--out", str(first)]) == 0
    capsys.readouterr()

    status = run_main([*TINY, "--hidden-channels", "4", "--resume", str(first / "checkpoint_last.pt"), "--out", str(tmp_path / "second")])

    assert status == 2
    assert "--hidden-channels 8 (here 4)" in capsys.readouterr().err
    assert not (tmp_path / "second").exists()


def test_idx_file_trains(tmp_path):
    torch.manual_seed(0)
    images = torch.randint(0, 256, (30, 6, 6))
    path = write_idx(tmp_path / "images-idx3-ubyte.gz", images, compress=True)
    out = tmp_path / "run"

    assert run_main([*TINY, "--idx-images", str(path), "--out", str(out)]) == 0

    metrics = json.loads((out / "metrics.json").read_text())
    assert metrics["dataset"] == "idx:images-idx3-ubyte.gz"
    assert metrics["num_bins"] == 256
    assert metrics["image_shape"] == [1, 6, 6]
    assert sum(metrics["num_images"].values()) == 30


def test_read_idx_images_round_trip(tmp_path):
    images = torch.randint(0, 256, (5, 3, 4))
    path = write_idx(tmp_path / "plain-idx3-ubyte", images)

    loaded = read_idx_images(path)

    assert loaded.shape == (5, 1, 3, 4)
    assert loaded.dtype == torch.int64
    assert torch.equal(loaded[:, 0], images)


@pytest.mark.parametrize("exception", [KeyboardInterrupt, SystemExit, OSError])
def test_atomic_open_removes_temporary_file(tmp_path, exception):
    target = tmp_path / "metrics.json"
    target.write_text("old")

    with pytest.raises(exception), atomic_open(target) as handle:
        handle.write(b"partial")
        raise exception()

    assert target.read_text() == "old"
    assert sorted(path.name for path in tmp_path.iterdir()) == ["metrics.json"]


def test_atomic_open_replaces_file(tmp_path):
    target = tmp_path / "metrics.json"
    target.write_text("old")

    with atomic_open(target) as handle:
        handle.write(b"new")

    assert target.read_text() == "new"
    assert sorted(path.name for path in tmp_path.iterdir()) == ["metrics.json"]


def signal_long_run(out, signals, pause_after_checkpoint):
    """Start a long train.py run and send it `signals`, (number, delay) pairs, after its first checkpoint.

    Returns the exit status and stderr.
    """
    command = [
        sys.executable, str(SCRIPT), *TINY, "--epochs", "400", "--steps-per-epoch", "1",
        "--device", "cpu", "--threads", "1", "--out", str(out),
    ]
    process = subprocess.Popen(command, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
    try:
        deadline = time.monotonic() + 120
        while not (out / "checkpoint_last.pt").exists():
            assert process.poll() is None, process.stderr.read()
            assert time.monotonic() < deadline, "no checkpoint after 120 s"
            time.sleep(0.02)
        time.sleep(pause_after_checkpoint)
        for number, delay in signals:
            process.send_signal(number)
            time.sleep(delay)
        _, error = process.communicate(timeout=60)
    finally:
        if process.poll() is None:
            process.kill()
            process.wait()
    return process.returncode, error


@pytest.mark.parametrize(("number", "status"), [(signal.SIGTERM, 143), (signal.SIGINT, 130)], ids=["SIGTERM", "SIGINT"])
def test_signal_leaves_no_temporary_files(tmp_path, number, status):
    out = tmp_path / "run"

    # A few more epochs after the first checkpoint, so that the signal may arrive while a
    # checkpoint is being written.
    returncode, error = signal_long_run(out, [(number, 0.0)], pause_after_checkpoint=0.3)

    assert returncode == status
    last_line = error.strip().splitlines()[-1]
    assert last_line.startswith(f"train.py: stopped by {number.name}.")
    assert f"continue with --resume {out / 'checkpoint_last.pt'}" in last_line
    assert "Traceback" not in error
    assert not [path.name for path in out.iterdir() if path.name.endswith(".tmp")]
    for name in ("checkpoint_last.pt", "checkpoint_best.pt"):
        assert torch.load(out / name, weights_only=True)["epoch"] >= 1, name


def test_main_in_process_gives_the_signal_handlers_back(tmp_path, capsys):
    # A SIGINT from a timer stops the in-process run, and afterwards Ctrl-C works again.
    timer = threading.Timer(3.0, os.kill, (os.getpid(), signal.SIGINT))
    timer.start()
    try:
        status = train.main([*TINY, "--epochs", "400", "--steps-per-epoch", "1", "--device", "cpu", "--out", str(tmp_path / "run")])
    finally:
        timer.cancel()

    assert status == 130
    assert signal.getsignal(signal.SIGINT) is signal.default_int_handler
    assert signal.getsignal(signal.SIGTERM) is signal.SIG_DFL


def test_second_signal_keeps_the_first_exit_status(tmp_path):
    out = tmp_path / "run"

    returncode, error = signal_long_run(out, [(signal.SIGINT, 0.01), (signal.SIGTERM, 0.0)], pause_after_checkpoint=0.0)

    assert returncode == 130, error
    assert "Traceback" not in error
    assert not [path.name for path in out.iterdir() if path.name.endswith(".tmp")]


@pytest.mark.parametrize(
    "train_options",
    [
        ["--dequantization", "variational"],
        ["--dequantization=variational"],
        ["--deq", "variational"],
        ["--out", "elsewhere"],
        ["--out=elsewhere"],
        ["--epochs", "1"],
        ["--threads=1"],
        ["--progress"],
        ["--help"],
        ["-h"],
    ],
    ids=["dequantization", "dequantization-equals", "prefix", "out", "out-equals", "epochs", "threads", "progress", "help", "h"],
)
def test_compare_rejects_options_it_sets(tmp_path, capsys, train_options):
    out = tmp_path / "compare"

    with pytest.raises(SystemExit) as exit_info:
        compare_dequantization.main(["--out", str(out), "--", "--steps-per-epoch", "1", *train_options])

    assert exit_info.value.code == 2
    assert f"train.py option {train_options[0]} after -- is not allowed" in capsys.readouterr().err
    assert not out.exists()


@pytest.mark.parametrize("sequential", [False, True], ids=["side-by-side", "sequential"])
def test_compare_stops_every_run_on_sigterm(tmp_path, capsys, monkeypatch, sequential):
    # The signal arrives right after the last run starts, before the script records it.
    started = []
    real_popen = subprocess.Popen
    last = 1 if not sequential else 0

    def popen(command, **kwargs):
        process = real_popen([sys.executable, "-c", "import time; time.sleep(60)"], **kwargs)
        started.append(process)
        if len(started) == last + 1:
            os.kill(os.getpid(), signal.SIGTERM)
        return process

    monkeypatch.setattr(compare_dequantization.subprocess, "Popen", popen)
    arguments = ["--out", str(tmp_path / "compare"), *(["--sequential"] if sequential else [])]

    status = compare_dequantization.main(arguments)

    assert status == 143
    assert len(started) == last + 1
    assert all(process.poll() is not None for process in started)
    assert "stopped by SIGTERM" in capsys.readouterr().err
    assert signal.getsignal(signal.SIGTERM) is signal.SIG_DFL


def test_compare_ignores_metrics_of_an_earlier_run(tmp_path, capsys, monkeypatch):
    # Runs that exit 0 without writing metrics.json must not be reported with old figures.
    out = tmp_path / "compare"
    for name in ("uniform", "variational"):
        write_metrics(out / name, name, 2.5)
        os.utime(out / name / "metrics.json", (0, 0))
    real_popen = subprocess.Popen
    monkeypatch.setattr(
        compare_dequantization.subprocess, "Popen",
        lambda command, **kwargs: real_popen([sys.executable, "-c", "pass"], **kwargs),
    )

    assert compare_dequantization.main(["--out", str(out)]) == 1

    captured = capsys.readouterr()
    assert "run ended without writing" in captured.err
    assert "2.5000" not in captured.out


def test_compare_out_is_a_file(tmp_path, capsys):
    blocker = tmp_path / "file.txt"
    blocker.write_text("not a folder")

    assert compare_dequantization.main(["--out", str(blocker)]) == 2

    assert "is an existing file, not a folder" in capsys.readouterr().err
    assert blocker.read_text() == "not a folder"


def write_metrics(folder, dequantization, test_bpd):
    folder.mkdir(parents=True)
    metrics = {
        "dequantization": dequantization,
        "dataset": "digits",
        "num_images": {"test": 180},
        "num_bins": 17,
        "epochs": 1,
        "iw_samples": 2,
        "test_bpd": test_bpd,
        "test_iw_bpd": test_bpd - 0.1,
        "parameters": {"total": 1234},
        "train_seconds": 3.0,
    }
    (folder / "metrics.json").write_text(json.dumps(metrics))


def test_compare_table_labels_rows_from_metrics(tmp_path, capsys):
    # The labels come from each run's metrics.json, not from the folder names.
    write_metrics(tmp_path / "uniform", "variational", 2.5)
    write_metrics(tmp_path / "variational", "variational", 2.25)

    compare_dequantization.print_table(tmp_path, 10.0)

    lines = capsys.readouterr().out.strip().splitlines()
    assert "1 epoch;" in lines[0]
    assert lines[1].startswith("dequantization  test bpd")
    assert [line.split()[:2] for line in lines[3:]] == [["variational", "2.5000"], ["variational", "2.2500"]]
    assert [line for line in lines if line != line.rstrip()] == []


def test_quickstart_help_does_not_run():
    result = subprocess.run(
        [sys.executable, str(EXAMPLES / "quickstart.py"), "--help"], check=False, capture_output=True, text=True, timeout=120
    )

    assert result.returncode == 0, result.stderr
    assert result.stdout.startswith("usage: quickstart.py")
    assert "test images" not in result.stdout
