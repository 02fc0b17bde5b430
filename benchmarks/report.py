"""Markdown tables and the description of the machine and the software versions."""

from __future__ import annotations

import importlib.metadata
import os
import platform
import subprocess
from collections.abc import Sequence

import torch

__all__ = [
    "environment_lines",
    "format_mib",
    "format_ms",
    "format_ratio",
    "load_average",
    "markdown_table",
]


def markdown_table(headers: Sequence[str], rows: Sequence[Sequence[str]], align: str) -> str:
    """Format a Markdown table; `align` has one letter per column, "l" or "r"."""
    if len(align) != len(headers):
        raise ValueError(f"align must have {len(headers)} letters, one per column, got {align!r}")
    widths = [len(header) for header in headers]
    for row in rows:
        widths = [max(width, len(cell)) for width, cell in zip(widths, row)]

    def line(cells: Sequence[str]) -> str:
        padded = [
            cell.rjust(width) if side == "r" else cell.ljust(width)
            for cell, width, side in zip(cells, widths, align)
        ]
        return "| " + " | ".join(padded) + " |"

    rule = [
        ("-" * (width - 1) + ":") if side == "r" else "-" * width
        for width, side in zip(widths, align)
    ]
    return "\n".join([line(headers), line(rule), *(line(row) for row in rows)])


def format_ms(seconds: float) -> str:
    return f"{seconds * 1e3:.3f}"


def format_ratio(ratio: float) -> str:
    return f"{ratio:.2f}x"


def format_mib(num_bytes: int) -> str:
    return f"{num_bytes / 2**20:.2f}"


def load_average() -> str:
    """Return the 1-, 5- and 15-minute load averages as text, or 'unknown'."""
    try:
        return " / ".join(f"{value:.2f}" for value in os.getloadavg())
    except OSError:
        return "unknown"


def _cpu_model() -> str:
    try:
        with open("/proc/cpuinfo", encoding="utf-8") as cpuinfo:
            for line in cpuinfo:
                if line.startswith("model name"):
                    return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or "unknown"


def _version(package: str) -> str:
    try:
        return importlib.metadata.version(package)
    except importlib.metadata.PackageNotFoundError:
        return "not installed"


def _compiler() -> str:
    try:
        result = subprocess.run(["gcc", "--version"], capture_output=True, text=True, check=True)
    except (OSError, subprocess.CalledProcessError):
        return "gcc not found"
    return result.stdout.splitlines()[0]


def environment_lines(device: torch.device) -> list[str]:
    """Describe the machine and the software, one Markdown list item per line."""
    lines = [
        f"- CPU: {_cpu_model()}, {os.cpu_count()} logical cores, torch uses "
        f"{torch.get_num_threads()} threads",
    ]
    if device.type == "cuda":
        lines.append(f"- GPU: {torch.cuda.get_device_name(device)}, CUDA {torch.version.cuda}")
    lines += [
        f"- Python {platform.python_version()}, torch {torch.__version__}, nflows "
        f"{_version('nflows')}, flowext {_version('flowext')}",
        f"- C++ compiler for torch.compile: {_compiler()}",
    ]
    return lines
