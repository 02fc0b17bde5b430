"""The targets that the benchmark checks, with the measured figure and a verdict for each."""

from __future__ import annotations

import statistics

from benchmarks.measure import Timing
from benchmarks.report import format_ratio, markdown_table
from benchmarks.settings import FLOWEXT_CHECKED, FLOWEXT_UNCHECKED, HAND, TORCH, Results, emit

__all__ = ["section_targets"]

#: Eager flowext at most this fraction of the hand-written formulas' time.
EAGER_TARGET = 0.7
#: Compiled flowext at most this fraction of the compiled hand-written formulas' time.
COMPILED_TARGET = 1.0
#: flowext's layers below this fraction of a training step of the demo model.
TRAINING_SHARE_TARGET = 0.05


def _paired_ratio(mine: Timing, theirs: Timing) -> float:
    """Return the median over the rounds of `mine` / `theirs`, both timed in the same round."""
    return statistics.median(a / b for a, b in zip(mine.seconds, theirs.seconds))


def _ratios_text(ratios: dict[str, float]) -> str:
    return ", ".join(f"{format_ratio(ratio)} on {shape}" for shape, ratio in ratios.items())


def _verdict(met: bool) -> str:
    return "met" if met else "missed"


def _eager_rows(results: Results) -> list[list[str]]:
    rows = []
    for variant in (FLOWEXT_UNCHECKED, FLOWEXT_CHECKED):
        to_hand = {shape: timings[variant].ratio for shape, timings in results.eager.items()}
        to_torch = {
            shape: _paired_ratio(timings[variant], timings[TORCH])
            for shape, timings in results.eager.items()
        }
        rows.append(
            [
                f"eager, {variant}: time <= {EAGER_TARGET}x hand-written",
                _ratios_text(to_hand),
                _verdict(max(to_hand.values()) <= EAGER_TARGET),
            ]
        )
        rows.append(
            [
                f"eager, {variant}: time <= torch transforms",
                _ratios_text(to_torch),
                _verdict(max(to_torch.values()) <= 1.0),
            ]
        )
    return rows


def _graph_break_row(results: Results) -> list[str]:
    unchecked = [
        breaks for name, breaks in results.layer_breaks.items() if "validate_args=True" not in name
    ]
    counts = [breaks.breaks for breaks in unchecked]
    if None in counts:
        return ["compiled: no graph breaks in flowext's layers", "explain failed", "missed"]
    total = sum(counts)
    return [
        "compiled: no graph breaks in flowext's layers (validate_args=False)",
        f"{total} graph breaks in {len(unchecked)} calls",
        _verdict(total == 0),
    ]


def _compiled_row(results: Results) -> list[str]:
    target = f"compiled, {FLOWEXT_UNCHECKED}: time <= {COMPILED_TARGET}x compiled hand-written"
    to_hand = {
        shape: timings[FLOWEXT_UNCHECKED].ratio
        for shape, timings in results.compiled.items()
        if FLOWEXT_UNCHECKED in timings and HAND in timings
    }
    if len(to_hand) < len(results.compiled):
        return [target, "flowext or the hand-written formulas failed to compile", "missed"]
    return [target, _ratios_text(to_hand), _verdict(max(to_hand.values()) <= COMPILED_TARGET)]


def section_targets(results: Results) -> None:
    """Print each target that the sections run have figures for, met or missed."""
    rows = []
    if results.eager:
        rows += _eager_rows(results)
    if results.layer_breaks:
        rows.append(_graph_break_row(results))
    if results.compiled:
        rows.append(_compiled_row(results))
    if results.training_share is not None:
        share = results.training_share
        rows.append(
            [
                f"flowext's layers below {TRAINING_SHARE_TARGET:.0%} of a training step",
                f"{share:.2%}",
                _verdict(share < TRAINING_SHARE_TARGET),
            ]
        )

    emit("## Targets")
    emit()
    emit(
        "Each time ratio is the median over the rounds of the two candidates' times in the "
        "same round; a target is met when it holds on every shape."
    )
    emit()
    emit(markdown_table(["target", "measured", "verdict"], rows, "lll"))
    emit()
