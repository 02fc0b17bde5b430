"""The sections of the benchmark output: each one measures and prints its tables."""

from __future__ import annotations

import functools
import statistics
from collections.abc import Callable

import torch

from benchmarks.compiled import compile_call, count_graph_breaks
from benchmarks.dequantizers import UNIFORM, scale_and_logit, with_each_dequantizer
from benchmarks.measure import check_memory_method, cycle_inputs, memory_method
from benchmarks.pipelines import FlowextPipeline, noise_only, reference_tail
from benchmarks.report import (
    environment_lines,
    format_mib,
    format_ms,
    load_average,
    markdown_table,
)
from benchmarks.settings import (
    FLOWEXT_CHECKED,
    HAND,
    NOISE_ONLY,
    TIME_HEADERS,
    Results,
    Settings,
    candidates_for,
    emit,
    integer_batch,
    shape_text,
    timing_rows,
)
from benchmarks.training import (
    DIGITS_BINS,
    DIGITS_SHAPE,
    build_demo_model,
    digits_batch,
    measure_step_share,
)
from flowext import Dequantize, Logit, Scale, dequantization_pipeline
from flowext.nflows import TransformAdapter

__all__ = [
    "section_agreement",
    "section_compiled",
    "section_dequantizers",
    "section_forward",
    "section_inverse",
    "section_setup",
    "section_training",
]


def section_setup(settings: Settings, command: str) -> None:
    expected, measured = check_memory_method(settings.device)
    verdict = "matches" if expected == measured else "DOES NOT MATCH"
    emit("## Setup")
    emit()
    for line in environment_lines(settings.device):
        emit(line)
    emit(f"- Device: {settings.device}; load average (1, 5, 15 min) at the start: {load_average()}")
    emit(f"- Command: `{command}`")
    emit(
        f"- Data: float32 integers in [0, {settings.num_bins - 1}] (K = {settings.num_bins}), "
        f"alpha = {settings.alpha}"
    )
    emit(
        f"- Timing: {settings.warmup} warm-up calls per candidate, then {settings.rounds} rounds; "
        f"in each round every candidate runs for about {settings.block_seconds * 1e3:.0f} ms "
        f"and records its mean time per call. The order of the candidates rotates from round to "
        f"round. The tables give the median, min and max over the rounds, and the median over "
        f"the rounds of the ratio to the reference measured in the same round."
    )
    emit(f"- Peak memory: {memory_method(settings.device)}.")
    emit(
        f"  Check on a known allocation (4 MiB and 2 MiB alive together, then 1 MiB returned): "
        f"expected {expected} bytes, measured {measured} bytes, which {verdict}."
    )
    emit()


def section_agreement(settings: Settings) -> None:
    emit("## Agreement of the candidates")
    emit()
    emit(
        "Each candidate's deterministic part (Scale, squash, logit) on the same dequantized "
        "values, against a float64 evaluation of the formulas; and the round trip "
        f"x -> forward -> inverse over {settings.roundtrip_batches} batches, counting elements "
        "that come back as another integer. The inputs of the inverse are copies of the forward's "
        "outputs, so no cache returns stored values."
    )
    emit()
    rows = []
    for shape in settings.shapes:
        x = integer_batch(shape, settings)
        y = x + torch.rand_like(x)
        z_reference, log_det_reference = reference_tail(y, settings.num_bins, settings.alpha)
        for candidate in candidates_for(shape, settings):
            z, log_det = candidate.tail(y)
            z_error = float((z.double() - z_reference).abs().max())
            log_det_error = float(
                ((log_det.double() - log_det_reference).abs() / log_det_reference.abs()).max()
            )
            wrong = 0
            for _ in range(settings.roundtrip_batches):
                z_sampled, _ = candidate.forward(x)
                x_back, _ = candidate.inverse(z_sampled.clone())
                wrong += int((x_back != x).sum())
            total = settings.roundtrip_batches * x.numel()
            rows.append(
                [
                    shape_text(shape),
                    candidate.name,
                    f"{z_error:.1e}",
                    f"{log_det_error:.1e}",
                    f"{wrong} of {total}",
                ]
            )
    headers = [
        "shape",
        "candidate",
        "max abs error of z",
        "max rel. error of log-det",
        "round trip: wrong integers",
    ]
    emit(markdown_table(headers, rows, "llrrr"))
    emit()


def section_forward(settings: Settings, results: Results) -> None:
    emit("## Forward, eager: data to logit space with the per-example log-det")
    emit()
    emit(
        f"The row '{NOISE_ONLY}' draws the uniform noise and adds it, which every candidate "
        f"does, so no candidate can be faster than it."
    )
    emit()
    rows = []
    for shape in settings.shapes:
        x = integer_batch(shape, settings)
        calls = {c.name: functools.partial(c.forward, x) for c in candidates_for(shape, settings)}
        calls[NOISE_ONLY] = functools.partial(noise_only, x)
        timings, shape_rows = timing_rows(shape_text(shape), calls, HAND, settings)
        results.eager[shape_text(shape)] = timings
        rows += shape_rows
    headers = ["shape", "candidate", *TIME_HEADERS, "time / hand-written", "peak MiB"]
    emit(markdown_table(headers, rows, "llrrrrr"))
    emit()


def _layer_calls(settings: Settings) -> list[tuple[str, Callable[..., object], torch.Tensor]]:
    """Return each flowext layer call to explain, with an input of the first shape."""
    shape = settings.shapes[0]
    num_bins, alpha, event_dim = settings.num_bins, settings.alpha, len(shape) - 1
    x = integer_batch(shape, settings)
    y = x + torch.rand_like(x)
    unit = y / num_bins
    z = torch.logit(unit * (1 - alpha) + alpha / 2)

    def pipeline(validate_args: bool):
        return dequantization_pipeline(
            num_bins, alpha, event_dim=event_dim, validate_args=validate_args
        )

    return [
        (
            "Dequantize(validate_args=False).call_and_ladj",
            Dequantize(num_bins, event_dim=event_dim, validate_args=False).call_and_ladj,
            x,
        ),
        ("Scale(1/K).call_and_ladj", Scale(1 / num_bins, event_dim=event_dim).call_and_ladj, y),
        ("Logit(alpha).call_and_ladj", Logit(alpha, event_dim=event_dim).call_and_ladj, unit),
        ("Logit(alpha).inv.call_and_ladj", Logit(alpha, event_dim=event_dim).inv.call_and_ladj, z),
        (
            "Scale(1/K).inv.call_and_ladj",
            Scale(1 / num_bins, event_dim=event_dim).inv.call_and_ladj,
            unit,
        ),
        (
            "Dequantize.inv.call_and_ladj (quantize)",
            Dequantize(num_bins, event_dim=event_dim).inv.call_and_ladj,
            y,
        ),
        (
            "dequantization_pipeline(validate_args=False).call_and_ladj",
            pipeline(False).call_and_ladj,
            x,
        ),
        (
            "dequantization_pipeline(validate_args=False).inv.call_and_ladj",
            pipeline(False).inv.call_and_ladj,
            z,
        ),
        (
            "TransformAdapter(dequantization_pipeline(validate_args=False))",
            TransformAdapter(pipeline(False)).forward,
            x,
        ),
        (
            "Dequantize(validate_args=True).call_and_ladj",
            Dequantize(num_bins, event_dim=event_dim).call_and_ladj,
            x,
        ),
        (
            "dequantization_pipeline(validate_args=True).call_and_ladj",
            pipeline(True).call_and_ladj,
            x,
        ),
    ]


def section_compiled(settings: Settings, results: Results) -> None:
    emit(f"## Forward under torch.compile (backend {settings.compile_backend!r})")
    emit()
    emit(
        f"Graph breaks of each flowext layer, from torch._dynamo.explain on shape "
        f"{shape_text(settings.shapes[0])}. With validate_args=True, Dequantize reads the data "
        f"to check it, which breaks the graph by design."
    )
    emit()
    rows = []
    for name, call, tensor in _layer_calls(settings):
        breaks = count_graph_breaks(call, tensor)
        results.layer_breaks[name] = breaks
        graphs = "" if breaks.graphs is None else str(breaks.graphs)
        rows.append([name, graphs, breaks.breaks_text, breaks.first_reason])
    emit(
        markdown_table(
            ["flowext call", "graphs", "graph breaks", "first break reason"], rows, "lrrl"
        )
    )
    emit()

    emit(
        "Each candidate compiled with dynamic=False for each shape, after Dynamo's caches were "
        "reset. The first call, which compiles, is timed on its own; it is short where "
        "Inductor's on-disk cache already holds the generated code, from an earlier run or from "
        "an earlier candidate with the same graph. The ratio is to the compiled hand-written "
        "formulas; the eager hand-written formulas run alongside."
    )
    emit()
    rows = []
    for shape in settings.compile_shapes:
        x = integer_batch(shape, settings)
        candidates = candidates_for(shape, settings)
        breaks = {c.name: count_graph_breaks(c.forward, x) for c in candidates}

        torch._dynamo.reset()
        calls: dict[str, Callable[[], object]] = {}
        extra: dict[str, list[str]] = {}
        failed = []
        for candidate in candidates:
            result = compile_call(
                candidate.forward, (x,), settings.device, settings.compile_backend
            )
            if result.call is None:
                failed.append(
                    [
                        shape_text(shape),
                        candidate.name,
                        breaks[candidate.name].breaks_text,
                        f"compile failed: {result.error}",
                        "",
                        "",
                        "",
                        "",
                        "",
                    ]
                )
                continue
            calls[candidate.name] = result.call
            extra[candidate.name] = [
                breaks[candidate.name].breaks_text,
                f"{result.first_call_seconds:.1f}",
            ]
        noise = compile_call(noise_only, (x,), settings.device, settings.compile_backend)
        if noise.call is not None:
            calls[NOISE_ONLY] = noise.call
            extra[NOISE_ONLY] = ["", f"{noise.first_call_seconds:.1f}"]
        eager_name = f"{HAND}, eager"
        calls[eager_name] = functools.partial(candidates[0].forward, x)
        extra[eager_name] = ["", ""]

        reference = HAND if HAND in calls else eager_name
        timings, shape_rows = timing_rows(shape_text(shape), calls, reference, settings, extra)
        results.compiled[shape_text(shape)] = timings
        rows += shape_rows + failed
        torch._dynamo.reset()

    headers = [
        "shape",
        "candidate",
        "graph breaks",
        "first call s",
        *TIME_HEADERS,
        "time / compiled hand-written",
        "peak MiB",
    ]
    emit(markdown_table(headers, rows, "llrrrrrrr"))
    emit()


def section_inverse(settings: Settings) -> None:
    emit("## Inverse, eager: logit space to integers, with the log-det")
    emit()
    emit(
        "Logit.inv, Scale.inv and quantization (floor, then clamp to [0, K - 1]). The calls "
        "alternate between two copies of the same input, so caches of size 1 never return a "
        "stored result. flowext's inverse does not check data, so validate_args plays no part."
    )
    emit()
    rows = []
    for shape in settings.shapes:
        x = integer_batch(shape, settings)
        candidates = [c for c in candidates_for(shape, settings) if c.name != FLOWEXT_CHECKED]
        z, _ = candidates[0].forward(x)
        inputs = [z.clone(), z.clone()]
        calls = {
            ("flowext" if isinstance(c, FlowextPipeline) else c.name): cycle_inputs(
                c.inverse, inputs
            )
            for c in candidates
        }
        _, shape_rows = timing_rows(shape_text(shape), calls, HAND, settings)
        rows += shape_rows
    headers = ["shape", "candidate", *TIME_HEADERS, "time / hand-written", "peak MiB"]
    emit(markdown_table(headers, rows, "llrrrrr"))
    emit()


def section_dequantizers(settings: Settings) -> None:
    emit("## Variational against uniform dequantization, forward")
    emit()
    torch.manual_seed(settings.seed)
    demo = build_demo_model(settings.alpha)
    emit(
        "The nflows forward (data to noise, with the log-det) of each dequantizer followed by "
        "the same transforms, with autograd recording as in training: for the benchmark "
        "shapes, flowext's Scale and Logit; for the digits, the demo model's transforms after "
        f"its dequantizer. Demo model: {demo.source}."
    )
    emit()
    cases = []
    for shape in settings.shapes:
        rest = scale_and_logit(settings.num_bins, settings.alpha, len(shape) - 1)
        flows = with_each_dequantizer(settings.num_bins, shape[1:], rest)
        cases.append((shape_text(shape), flows, integer_batch(shape, settings)))
    digits_rest = list(demo.flow._transform._transforms[1:])
    digits = digits_batch(settings.train_batch, settings.device)
    cases.append(
        (
            f"digits {shape_text(digits.shape)}",
            with_each_dequantizer(DIGITS_BINS, DIGITS_SHAPE, digits_rest),
            digits,
        )
    )

    rows = []
    for label, flows, x in cases:
        calls = {}
        for name, flow in flows.items():
            flow.to(settings.device)
            calls[name] = functools.partial(flow, x)
        _, case_rows = timing_rows(label, calls, UNIFORM, settings)
        rows += case_rows
    headers = ["input", "dequantizer", *TIME_HEADERS, "time / uniform", "peak MiB"]
    emit(markdown_table(headers, rows, "llrrrrr"))
    emit()


def section_training(settings: Settings, results: Results) -> None:
    emit("## Share of a training step spent in flowext's layers")
    emit()

    torch.manual_seed(settings.seed)
    demo = build_demo_model(settings.alpha)
    batch = digits_batch(settings.train_batch, settings.device)
    share = measure_step_share(
        demo,
        batch,
        settings.device,
        warmup_steps=2,
        timed_steps=settings.train_steps,
        profiled_steps=max(1, settings.train_steps // 2),
    )
    results.training_share = share.total_fraction

    emit(
        f"Model: {demo.source}. One step: log_prob of a batch of digits, the mean negative "
        f"log-likelihood, backward and an Adam update. Step times come from "
        f"{settings.train_steps} steps without the profiler. The shares come from "
        f"torch.profiler over {max(1, settings.train_steps // 2)} further steps, with each call "
        f"of a flowext layer in a record_function range: forward is the time inside those "
        f"ranges, backward the time of the autograd nodes that those calls created. "
        f"flowext layers found: {', '.join(share.layers)}."
    )
    emit()

    row = [
        f"digits {shape_text(batch.shape)}",
        format_ms(statistics.median(share.step_seconds)),
        format_ms(min(share.step_seconds)),
        format_ms(max(share.step_seconds)),
        f"{share.forward_fraction:.2%}",
        f"{share.backward_fraction:.2%}",
        f"{share.total_fraction:.2%}",
        format_mib(share.peak_bytes),
    ]
    headers = [
        "batch",
        "step median ms",
        "min ms",
        "max ms",
        "flowext forward",
        "flowext backward",
        "flowext total",
        "step peak MiB",
    ]
    emit(markdown_table(headers, [row], "lrrrrrrr"))
    emit()
