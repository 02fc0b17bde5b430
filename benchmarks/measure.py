"""Interleaved timing and peak memory of a single call, on the CPU or on CUDA."""

from __future__ import annotations

import gc
import math
import statistics
import time
from collections.abc import Callable
from dataclasses import dataclass

import torch
from torch._C._autograd import DeviceType
from torch.profiler import ProfilerActivity, profile

__all__ = [
    "Timing",
    "check_memory_method",
    "cycle_inputs",
    "memory_method",
    "peak_memory_bytes",
    "synchronize",
    "time_interleaved",
]


def synchronize(device: torch.device) -> None:
    """Wait for the work queued on `device`; the CPU runs every op synchronously."""
    if device.type == "cuda":
        torch.cuda.synchronize(device)


@dataclass(frozen=True)
class Timing:
    """Seconds per call of one candidate in each round, and its rounds relative to a reference."""

    seconds: tuple[float, ...]
    ratios: tuple[float, ...]

    @property
    def median(self) -> float:
        return statistics.median(self.seconds)

    @property
    def minimum(self) -> float:
        return min(self.seconds)

    @property
    def maximum(self) -> float:
        return max(self.seconds)

    @property
    def ratio(self) -> float:
        """Median over the rounds of this candidate's time divided by the reference's."""
        return statistics.median(self.ratios)


def _seconds_per_call(call: Callable[[], object], repeats: int, device: torch.device) -> float:
    synchronize(device)
    start = time.perf_counter()
    for _ in range(repeats):
        call()
    synchronize(device)
    return (time.perf_counter() - start) / repeats


def time_interleaved(
    calls: dict[str, Callable[[], object]],
    reference: str,
    device: torch.device,
    *,
    rounds: int,
    warmup: int,
    block_seconds: float,
) -> dict[str, Timing]:
    """Time each call in `rounds` rounds that visit every candidate once, in rotating order.

    Each candidate first runs `warmup` times. In each round it then runs as many times in a row
    as fill about `block_seconds`, and the round records the mean time per call. Visiting every
    candidate in every round, in an order that rotates from round to round, spreads changes in
    machine load evenly over the candidates. Each candidate's per-round ratio to `reference`
    compares two blocks measured moments apart.
    """
    names = list(calls)
    if reference not in calls:
        raise ValueError(f"reference must be one of {names}, got {reference!r}")

    repeats = {}
    for name in names:
        for _ in range(warmup):
            calls[name]()
        estimate = statistics.median(_seconds_per_call(calls[name], 1, device) for _ in range(3))
        repeats[name] = max(1, math.ceil(block_seconds / max(estimate, 1e-7)))

    samples: dict[str, list[float]] = {name: [] for name in names}
    gc.collect()
    gc.disable()
    try:
        for index in range(rounds):
            shift = index % len(names)
            for name in names[shift:] + names[:shift]:
                samples[name].append(_seconds_per_call(calls[name], repeats[name], device))
    finally:
        gc.enable()

    reference_seconds = samples[reference]
    return {
        name: Timing(
            seconds=tuple(seconds),
            ratios=tuple(mine / theirs for mine, theirs in zip(seconds, reference_seconds)),
        )
        for name, seconds in samples.items()
    }


def cycle_inputs(
    function: Callable[[torch.Tensor], object], inputs: list[torch.Tensor]
) -> Callable[[], object]:
    """Return a call of `function` on the next tensor of `inputs`, round robin.

    Transforms with a cache of size 1 return the stored result when they get the very tensor
    of their last call. Alternating between two tensors with equal values defeats the cache
    without adding work to the call.
    """
    position = 0

    def call() -> object:
        nonlocal position
        position = (position + 1) % len(inputs)
        return function(inputs[position])

    return call


def memory_method(device: torch.device) -> str:
    """Describe how `peak_memory_bytes` measures on `device`."""
    if device.type == "cuda":
        return "torch.cuda.max_memory_allocated, less the memory allocated before the call"
    return (
        "torch.profiler with profile_memory=True: the running sum of the CPU allocator's "
        "allocation and free events during the call, at its maximum"
    )


def peak_memory_bytes(call: Callable[[], object], device: torch.device) -> int:
    """Return the peak of tensor memory allocated during one `call`, over what existed before.

    Tensors that the call returns count, because they are allocated during it.
    """
    if device.type == "cuda":
        synchronize(device)
        torch.cuda.reset_peak_memory_stats(device)
        before = torch.cuda.memory_allocated(device)
        result = call()
        synchronize(device)
        peak = torch.cuda.max_memory_allocated(device) - before
        del result
        return peak

    with profile(activities=[ProfilerActivity.CPU], profile_memory=True) as profiler:
        result = call()
    del result

    # NOTE: kineto_results is not a documented attribute, but it is the only place that keeps
    # every allocation and free as its own event. The public `events()` folds them into the
    # ops' net memory, which hides memory that an op allocates and frees again.
    events = [
        event
        for event in profiler.profiler.kineto_results.events()
        if event.name() == "[memory]" and event.device_type() == DeviceType.CPU
    ]
    events.sort(key=lambda event: event.start_ns())
    current = peak = 0
    for event in events:
        current += event.nbytes()
        peak = max(peak, current)
    return peak


def check_memory_method(device: torch.device) -> tuple[int, int]:
    """Measure allocations of known size and return the expected and the measured peak.

    A 4 MiB and a 2 MiB tensor live together, then both are freed and a 1 MiB tensor is
    returned: the peak is 6 MiB. A method that missed the frees would report 7 MiB, one that
    missed an allocation at most 5 MiB.
    """

    def allocate() -> torch.Tensor:
        first = torch.empty(1 << 20, dtype=torch.float32, device=device)
        second = torch.empty(1 << 19, dtype=torch.float32, device=device)
        del first, second
        return torch.empty(1 << 18, dtype=torch.float32, device=device)

    expected = 6 << 20
    return expected, peak_memory_bytes(allocate, device)
