"""The share of a training step of the demo model that flowext's layers take.

The model is the training example's `build_flow` (examples/flowtrain) when that package
imports and builds, and otherwise a RealNVP-style nflows model built here. flowext's layers in
it are found by type (`TransformAdapter`, which `UniformDequantizer` is, and
`VariationalDequantizer`), and module hooks put each of their calls in a
`torch.profiler.record_function` range. The profiler then gives

- the forward time: the time of those ranges;
- the backward time: the time of the autograd nodes that those calls created, which the hooks
  collect from the outputs' `grad_fn` back to the inputs' and the profiler names with the
  same sequence numbers. With uniform dequantization no parameter lies before flowext's
  layers, so their calls create no autograd nodes and this time is 0.
"""

from __future__ import annotations

import math
import pathlib
import sys
import time
from dataclasses import dataclass

import torch
from nflows.flows.base import Flow
from nflows.nn.nets import ResidualNet
from nflows.transforms.base import CompositeTransform
from nflows.transforms.base import Transform as NflowsTransform
from nflows.transforms.coupling import AffineCouplingTransform
from torch.autograd.profiler_util import FunctionEvent
from torch.profiler import ProfilerActivity, profile, record_function

from benchmarks.measure import peak_memory_bytes, synchronize
from flowext import Logit, Scale
from flowext.nflows import (
    StandardNormal,
    TransformAdapter,
    UniformDequantizer,
    VariationalDequantizer,
)

__all__ = ["DemoModel", "StepShare", "build_demo_model", "digits_batch", "measure_step_share"]

EXAMPLES_DIR = pathlib.Path(__file__).resolve().parent.parent / "examples"
FLOWEXT_LABEL = "flowext::"
STEP_LABEL = "benchmark::train_step"
BACKWARD_PREFIX = "autograd::engine::evaluate_function: "

#: The digits have 17 levels, 0 to 16.
DIGITS_BINS = 17
DIGITS_SHAPE = (1, 8, 8)


@dataclass
class DemoModel:
    """A flow over the 8x8 digits and where it came from."""

    flow: Flow
    source: str


def digits_batch(batch_size: int, device: torch.device) -> torch.Tensor:
    """Return `batch_size` of scikit-learn's digits as float32 integers of shape (N, 1, 8, 8)."""
    from sklearn.datasets import load_digits

    images = torch.as_tensor(load_digits().images, dtype=torch.float32).unsqueeze(1)
    repeats = math.ceil(batch_size / len(images))
    return images.repeat(repeats, 1, 1, 1)[:batch_size].to(device)


class Flatten(NflowsTransform):
    """nflows transform that flattens each example to a vector, with a log-det of 0."""

    def __init__(self, shape: tuple[int, ...]) -> None:
        super().__init__()
        self.shape = tuple(shape)

    def forward(self, inputs: torch.Tensor, context: torch.Tensor | None = None):
        return inputs.reshape(inputs.shape[0], -1), inputs.new_zeros(inputs.shape[0])

    def inverse(self, inputs: torch.Tensor, context: torch.Tensor | None = None):
        return inputs.reshape(inputs.shape[0], *self.shape), inputs.new_zeros(inputs.shape[0])


def _fallback_flow(alpha: float) -> Flow:
    """Build a RealNVP-style nflows flow: flowext's layers, then affine couplings over 64 pixels."""
    features = math.prod(DIGITS_SHAPE)

    def make_net(in_features: int, out_features: int) -> ResidualNet:
        return ResidualNet(in_features, out_features, hidden_features=128, num_blocks=2)

    layers = [
        UniformDequantizer(DIGITS_BINS),
        TransformAdapter(Scale(1.0 / DIGITS_BINS, event_dim=3, cache_size=0)),
        TransformAdapter(Logit(alpha, event_dim=3, cache_size=0)),
        Flatten(DIGITS_SHAPE),
    ]
    for index in range(6):
        mask = (torch.arange(features) % 2 == index % 2).to(torch.int64) * 2 - 1
        layers.append(AffineCouplingTransform(mask, make_net))
    return Flow(CompositeTransform(layers), StandardNormal([features]))


def build_demo_model(alpha: float) -> DemoModel:
    """Build the training example's flow for the digits, or the fallback if it is unavailable."""
    if str(EXAMPLES_DIR) not in sys.path:
        sys.path.insert(0, str(EXAMPLES_DIR))
    try:
        from flowtrain.model import FlowConfig, build_flow

        flow = build_flow(FlowConfig(shape=DIGITS_SHAPE, num_bins=DIGITS_BINS, alpha=alpha))
        return DemoModel(
            flow, "examples/flowtrain build_flow(FlowConfig(shape=(1, 8, 8), num_bins=17))"
        )
    except Exception as error:  # the example is optional: any failure selects the fallback
        reason = f"{type(error).__name__}: {error}".splitlines()[0]
        return DemoModel(
            _fallback_flow(alpha),
            f"RealNVP-style nflows model built by the benchmark (6 affine couplings, "
            f"ResidualNet 128x2), because examples/flowtrain did not build: {reason}",
        )


def _graph_nodes(tensors: object) -> list[torch.autograd.graph.Node]:
    """Return the autograd nodes that produced the tensors in `tensors` (a tensor or a tuple)."""
    if isinstance(tensors, torch.Tensor):
        tensors = (tensors,)
    if not isinstance(tensors, (tuple, list)):
        return []
    return [t.grad_fn for t in tensors if isinstance(t, torch.Tensor) and t.grad_fn is not None]


def _nodes_between(outputs: list, inputs: list) -> set[tuple[str, int]]:
    """Return (name, sequence number) of the autograd nodes from `outputs` back to `inputs`."""
    stop = set(inputs)
    found: set[tuple[str, int]] = set()
    seen = set()
    pending = list(outputs)
    while pending:
        node = pending.pop()
        if node is None or node in stop or node in seen:
            continue
        seen.add(node)
        if type(node).__name__ != "AccumulateGrad":
            found.add((node.name(), node._sequence_nr()))
        pending.extend(next_node for next_node, _ in node.next_functions)
    return found


def _label_flowext_layers(
    flow: Flow, backward_nodes: set[tuple[str, int]]
) -> list[torch.utils.hooks.RemovableHandle]:
    """Wrap each call of a flowext layer in `flow` in a record_function range.

    The hooks also add the autograd nodes that each call creates to `backward_nodes`, so that
    their backward can be separated from the rest of the step.
    """
    handles = []
    for name, module in flow.named_modules():
        if not isinstance(module, (TransformAdapter, VariationalDequantizer)):
            continue
        label = f"{FLOWEXT_LABEL}{type(module).__name__}({name})"
        open_calls: list[tuple[record_function, list]] = []

        def enter(module, args, label=label, open_calls=open_calls):
            scope = record_function(label)
            scope.__enter__()
            open_calls.append((scope, _graph_nodes(args)))

        def leave(module, args, output, open_calls=open_calls):
            scope, input_nodes = open_calls.pop()
            scope.__exit__(None, None, None)
            backward_nodes.update(_nodes_between(_graph_nodes(output), input_nodes))

        handles.append(module.register_forward_pre_hook(enter))
        handles.append(module.register_forward_hook(leave))
    return handles


def _has_flowext_ancestor(event: FunctionEvent) -> bool:
    parent = event.cpu_parent
    while parent is not None:
        if parent.name.startswith(FLOWEXT_LABEL):
            return True
        parent = parent.cpu_parent
    return False


@dataclass(frozen=True)
class StepShare:
    """Step time and the fractions of it spent in flowext's layers."""

    step_seconds: tuple[float, ...]
    forward_fraction: float
    backward_fraction: float
    peak_bytes: int
    layers: tuple[str, ...]

    @property
    def total_fraction(self) -> float:
        return self.forward_fraction + self.backward_fraction


def _attribute(
    events: list[FunctionEvent], backward_nodes: set[tuple[str, int]], device: torch.device
) -> tuple[float, float, float]:
    """Return the time of flowext's forward ranges, of their backward nodes and of the steps."""
    on_cuda = device.type == "cuda"

    def inclusive(event: FunctionEvent) -> float:
        return event.device_time_total if on_cuda else event.cpu_time_total

    ranges = [
        event
        for event in events
        if event.name.startswith(FLOWEXT_LABEL) and not _has_flowext_ancestor(event)
    ]
    backward = [
        event
        for event in events
        if event.name.startswith(BACKWARD_PREFIX)
        and (event.name[len(BACKWARD_PREFIX) :], event.sequence_nr) in backward_nodes
    ]

    if on_cuda:
        # NOTE: not run yet on CUDA. The backward pass runs on autograd's device thread,
        # outside the step's range, so the step total is every kernel's own device time.
        total = sum(event.self_device_time_total for event in events)
    else:
        total = sum(event.cpu_time_total for event in events if event.name == STEP_LABEL)
    return sum(map(inclusive, ranges)), sum(map(inclusive, backward)), total


def measure_step_share(
    model: DemoModel,
    batch: torch.Tensor,
    device: torch.device,
    *,
    warmup_steps: int,
    timed_steps: int,
    profiled_steps: int,
) -> StepShare:
    """Train `model` for a few steps: time them, then profile them to split off flowext's time."""
    flow = model.flow.to(device)
    optimizer = torch.optim.Adam(flow.parameters(), lr=1e-3)

    def step() -> None:
        optimizer.zero_grad(set_to_none=True)
        loss = -flow.log_prob(batch).mean()
        loss.backward()
        optimizer.step()

    for _ in range(warmup_steps):
        step()

    seconds = []
    for _ in range(timed_steps):
        synchronize(device)
        start = time.perf_counter()
        step()
        synchronize(device)
        seconds.append(time.perf_counter() - start)

    peak = peak_memory_bytes(step, device)

    backward_nodes: set[tuple[str, int]] = set()
    handles = _label_flowext_layers(flow, backward_nodes)
    activities = [ProfilerActivity.CPU]
    if device.type == "cuda":
        activities.append(ProfilerActivity.CUDA)
    try:
        with profile(activities=activities) as profiler:
            for _ in range(profiled_steps):
                with record_function(STEP_LABEL):
                    step()
                synchronize(device)
    finally:
        for handle in handles:
            handle.remove()

    events = list(profiler.events())
    forward, backward, total = _attribute(events, backward_nodes, device)
    layers = tuple(
        sorted(
            {
                event.name[len(FLOWEXT_LABEL) :]
                for event in events
                if event.name.startswith(FLOWEXT_LABEL)
            }
        )
    )
    return StepShare(
        step_seconds=tuple(seconds),
        forward_fraction=forward / total if total else float("nan"),
        backward_fraction=backward / total if total else float("nan"),
        peak_bytes=peak,
        layers=layers,
    )
