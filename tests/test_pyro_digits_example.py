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


def test_rejects_zero_steps():
    result = run_script("--steps", "0")

    assert result.returncode == 2
    assert "--steps must be at least 1, got 0" in result.stderr


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
