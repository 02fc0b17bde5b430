"""examples/pyro_digits.py runs end to end on a tiny budget and reports what it promises."""

import json
import math
import pathlib
import subprocess
import sys

import pytest

pytest.importorskip("pyro")
pytest.importorskip("nflows")
pytest.importorskip("sklearn")

SCRIPT = pathlib.Path(__file__).resolve().parent.parent / "examples" / "pyro_digits.py"
sys.path.insert(0, str(SCRIPT.parent))

import pyro_digits  # noqa: E402

TINY_BUDGET = [
    "--steps", "2",
    "--batch-size", "16",
    "--layers", "1",
    "--hidden", "16",
    "--noise-layers", "1",
    "--noise-hidden", "8",
    "--iw-samples", "3",
]


def run_script(*args):
    return subprocess.run(
        [sys.executable, str(SCRIPT), *args], capture_output=True, text=True, timeout=300, check=False
    )


def test_help_lists_options():
    result = run_script("--help")

    assert result.returncode == 0, result.stderr
    for option in ("--dequantization", "--steps", "--coupling", "--iw-samples", "--json"):
        assert option in result.stdout
    assert "1 if training diverges" in " ".join(result.stdout.split())


def test_rejects_zero_steps():
    result = run_script("--steps", "0")

    assert result.returncode == 2
    assert "--steps must be at least 1, got 0" in result.stderr


@pytest.mark.parametrize(
    ("argv", "message"),
    [
        (["--alpha", "1.5"], "--alpha must be a number in [0, 1), got 1.5"),
        (["--alpha", "-1"], "--alpha must be a number in [0, 1), got -1.0"),
        (["--alpha", "nan"], "--alpha must be a number in [0, 1), got nan"),
        (["--seed", "-1"], "--seed must be an integer from 0 to 4294967295, got -1"),
        (["--seed", str(2**32)], f"--seed must be an integer from 0 to 4294967295, got {2**32}"),
        (["--lr", "inf"], "--lr must be a positive number up to 3.4e+37, got inf"),
        (["--lr", "nan"], "--lr must be a positive number up to 3.4e+37, got nan"),
        (["--lr", "1e300"], "--lr must be a positive number up to 3.4e+37, got 1e+300"),
        (["--threads", "100000"], f"--threads must be at most {pyro_digits.MAX_THREADS}"),
    ],
    ids=["alpha-above-1", "alpha-negative", "alpha-nan", "seed-negative", "seed-too-large", "lr-inf", "lr-nan", "lr-overflow", "threads"],
)
def test_rejects_invalid_option(capsys, argv, message):
    with pytest.raises(SystemExit) as exit_info:
        pyro_digits.parse_args(argv)

    assert exit_info.value.code == 2
    assert message in capsys.readouterr().err


def test_diverging_training_stops_with_message():
    result = run_script(*TINY_BUDGET, "--dequantization", "uniform", "--lr", "1e30")

    assert result.returncode == 1
    assert result.stderr.startswith("pyro_digits.py: error: training of the uniform model diverged: after 1 SVI step")
    assert "Pass a smaller --lr than 1e+30." in result.stderr
    assert len(result.stderr.strip().splitlines()) == 1


def test_tiny_run_reports_bpd_and_trace():
    result = run_script(*TINY_BUDGET, "--coupling", "spline", "--json")

    assert result.returncode == 0, result.stderr
    report = json.loads(result.stdout)
    assert report["test_images"] == 297
    uniform, learned = report["results"]
    assert uniform["dequantization"] == "uniform"
    assert learned["dequantization"] == "learned"
    for entry in (uniform, learned):
        assert entry["steps"] == 2
        assert entry["iw_samples"] == 3
        assert math.isfinite(entry["test_bpd_one_draw"])
        assert math.isfinite(entry["test_bpd_iw"])
    assert learned["parameters"] > uniform["parameters"]

    assert uniform["trace_transforms"] == [
        "SplineCoupling()",
        "Permute()",
        "Logit(alpha=0.05).inv",
        "Scale(factor=0.058823529411764705).inv",
        "Dequantize(num_bins=17).inv",
    ]
    assert learned["trace_transforms"][-1] == "VariationalDequantization(num_bins=17, event_dim=1)"


def test_table_output_names_transforms():
    result = run_script(*TINY_BUDGET, "--dequantization", "learned")

    assert result.returncode == 0, result.stderr
    assert "bpd 1 draw" in result.stdout
    assert "transforms of site 'x' in a trace of the learned model:" in result.stdout
    assert "  VariationalDequantization(num_bins=17, event_dim=1)" in result.stdout
