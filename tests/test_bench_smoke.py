"""The benchmark program runs end to end in quick mode and prints every table.

No timing is checked: the figures depend on the machine and its load.
"""

import pathlib
import subprocess
import sys

ROOT = pathlib.Path(__file__).resolve().parent.parent
TIMEOUT_S = 600

HEADINGS = [
    "## Setup",
    "## Agreement of the candidates",
    "## Forward, eager",
    "## Forward under torch.compile",
    "## Inverse, eager",
    "## Variational against uniform dequantization",
    "## Share of a training step spent in flowext's layers",
    "## Targets",
]

CANDIDATES = [
    "hand-written",
    "flowext (validate_args=True)",
    "flowext (validate_args=False)",
    "torch transforms",
    "nflows",
]


def run_quick_benchmark() -> subprocess.CompletedProcess:
    # The eager backend traces with Dynamo, so graph breaks are counted, but skips Inductor's
    # C++ code generation, which takes minutes on a cold cache.
    command = [
        sys.executable,
        "-m",
        "benchmarks.bench_layers",
        "--quick",
        "--compile-backend",
        "eager",
        "--threads",
        "1",
    ]
    return subprocess.run(command, cwd=ROOT, capture_output=True, text=True, timeout=TIMEOUT_S)


def table_after(output: str, heading: str) -> list[str]:
    """Return the table lines of the section that starts at `heading`."""
    section = output.split(heading, 1)[1].split("\n## ", 1)[0]
    return [line for line in section.splitlines() if line.startswith("|")]


def test_quick_run_prints_every_table():
    result = run_quick_benchmark()
    assert result.returncode == 0, result.stderr[-4000:]
    output = result.stdout

    for heading in HEADINGS:
        assert heading in output, f"missing section {heading!r}"

    forward = table_after(output, "## Forward, eager")
    # A header, a rule, and for each of the 3 quick shapes one row per candidate and one for
    # the noise alone.
    assert len(forward) == 2 + 3 * (len(CANDIDATES) + 1)
    for name in [*CANDIDATES, "noise only"]:
        assert any(f"| {name}" in line for line in forward), name

    compiled = "\n".join(table_after(output, "## Forward under torch.compile"))
    assert "Logit(alpha).call_and_ladj" in compiled
    assert "compile failed" not in compiled

    assert "matches" in output.split("## Setup", 1)[1].split("\n## ", 1)[0]
    assert len(table_after(output, "## Inverse, eager")) == 2 + 3 * 4
    assert len(table_after(output, "## Variational against uniform")) == 2 + 4 * 2
    assert len(table_after(output, "## Share of a training step")) == 3
    assert len(table_after(output, "## Targets")) == 2 + 7
