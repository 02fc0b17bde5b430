"""torch.compile of the candidates: graph breaks from torch._dynamo.explain, compiled calls."""

from __future__ import annotations

import logging
import time
from collections.abc import Callable
from dataclasses import dataclass

import torch
import torch._dynamo

from benchmarks.measure import synchronize

__all__ = ["CompileResult", "GraphBreaks", "compile_call", "count_graph_breaks", "quiet_dynamo"]


def quiet_dynamo() -> None:
    """Keep Dynamo's graph-break warnings out of the tables; the tables count the breaks."""
    logging.getLogger("torch._dynamo").setLevel(logging.ERROR)


@dataclass(frozen=True)
class GraphBreaks:
    """Graphs and graph breaks that torch._dynamo.explain reports for one call, or its error."""

    graphs: int | None
    breaks: int | None
    first_reason: str
    error: str = ""

    @property
    def breaks_text(self) -> str:
        return f"failed: {self.error}" if self.error else str(self.breaks)


def _first_line(text: str, limit: int = 90) -> str:
    line = text.strip().splitlines()[0] if text.strip() else ""
    return line if len(line) <= limit else line[: limit - 3] + "..."


def count_graph_breaks(function: Callable[..., object], *args: object) -> GraphBreaks:
    """Run `function(*args)` under torch._dynamo.explain and return its graph breaks.

    Dynamo's caches are reset before and after, so that one explanation does not reuse the
    graphs of another.
    """
    torch._dynamo.reset()
    try:
        explanation = torch._dynamo.explain(function)(*args)
    except Exception as error:  # any failure of Dynamo goes into the table, not out of the run
        return GraphBreaks(
            None, None, "", error=f"{type(error).__name__}: {_first_line(str(error))}"
        )
    finally:
        torch._dynamo.reset()

    reasons = explanation.break_reasons
    first_reason = _first_line(str(reasons[0].reason)) if reasons else ""
    return GraphBreaks(explanation.graph_count, explanation.graph_break_count, first_reason)


@dataclass(frozen=True)
class CompileResult:
    """A compiled call with the seconds its first call took, or why compilation failed."""

    call: Callable[[], object] | None
    first_call_seconds: float | None
    error: str = ""


def compile_call(
    function: Callable[..., object], args: tuple, device: torch.device, backend: str
) -> CompileResult:
    """Compile `function` for fixed shapes and run it once on `args`, which compiles it."""
    compiled = torch.compile(function, backend=backend, dynamic=False)
    start = time.perf_counter()
    try:
        compiled(*args)
        synchronize(device)
    except Exception as error:  # a peer that fails to compile is a result, not a crash
        return CompileResult(None, None, error=f"{type(error).__name__}: {_first_line(str(error))}")
    seconds = time.perf_counter() - start
    return CompileResult(lambda: compiled(*args), seconds)
