"""PNG figures of a run: samples, dequantized values and the training curve.

matplotlib draws with its Agg back end (no display needed), and every figure is written
atomically through `atomic_open`.
"""

from __future__ import annotations

import math
from pathlib import Path

import matplotlib

matplotlib.use("Agg")

import matplotlib.pyplot as plt  # noqa: E402
from matplotlib.ticker import MaxNLocator  # noqa: E402
import numpy as np  # noqa: E402
import torch  # noqa: E402

from flowtrain.files import atomic_open  # noqa: E402

__all__ = ["save_dequantization_histogram", "save_sample_grid", "save_training_curve"]

#: Largest number of consecutive bins the histogram of dequantized values shows.
HISTOGRAM_MAX_BINS = 17

#: Histogram cells per bin of the data.
CELLS_PER_BIN = 20


def _save(figure: plt.Figure, path: str | Path) -> None:
    with atomic_open(path) as handle:
        figure.savefig(handle, format="png", dpi=100)
    plt.close(figure)


def save_sample_grid(path: str | Path, samples: torch.Tensor, num_bins: int) -> None:
    """Draw integer images (N, C, H, W) in a square grid, gray for 1 channel, RGB for 3.

    Images with another number of channels show their first channel.
    """
    images = samples.detach().cpu().float().clamp(0, num_bins - 1) / (num_bins - 1)
    count, channels = images.shape[0], images.shape[1]
    columns = math.ceil(math.sqrt(count))
    rows = math.ceil(count / columns)

    figure, axes = plt.subplots(rows, columns, figsize=(columns * 0.8, rows * 0.8), squeeze=False)
    for index, axis in enumerate(axes.flat):
        axis.axis("off")
        if index >= count:
            continue
        if channels == 3:
            axis.imshow(images[index].permute(1, 2, 0).numpy(), interpolation="nearest")
        else:
            axis.imshow(images[index, 0].numpy(), cmap="gray", vmin=0.0, vmax=1.0, interpolation="nearest")
    figure.suptitle(f"{count} samples from the model")
    figure.tight_layout()
    _save(figure, path)


def _histogram_window(images: torch.Tensor, num_bins: int) -> tuple[int, int]:
    """Return the first and last level of the window of bins the histogram shows.

    With more than `HISTOGRAM_MAX_BINS` levels, the window is the run of that many consecutive
    levels that contains the most pixels.
    """
    if num_bins <= HISTOGRAM_MAX_BINS:
        return 0, num_bins - 1
    counts = torch.bincount(images.flatten().long(), minlength=num_bins).double()
    window_sums = counts.unfold(0, HISTOGRAM_MAX_BINS, 1).sum(1)
    first = int(window_sums.argmax())
    return first, first + HISTOGRAM_MAX_BINS - 1


def save_dequantization_histogram(
    path: str | Path,
    images: torch.Tensor,
    uniform_values: torch.Tensor,
    model_values: torch.Tensor,
    *,
    num_bins: int,
    label: str,
) -> None:
    """Plot the continuous values x + u of uniform noise against those of the run's dequantizer.

    The top panel shows the density of x + u over a window of bins, the bottom panel the
    density of the noise u = y - x inside a bin, over all pixels. Uniform noise is flat in
    both; learned noise shows where q(u | x) puts its mass.

    Args:
        images: Integer images x.
        uniform_values: x + u with u uniform.
        model_values: x + u from the run's dequantizer.
        num_bins: The number of levels K.
        label: Name of the run's dequantization, for the legend.
    """
    images = images.detach().cpu().double()
    uniform_values = uniform_values.detach().cpu().double()
    model_values = model_values.detach().cpu().double()
    first, last = _histogram_window(images, num_bins)
    edges = np.linspace(first, last + 1, (last + 1 - first) * CELLS_PER_BIN + 1)
    inside = (images >= first) & (images <= last)

    figure, (top, bottom) = plt.subplots(2, 1, figsize=(9, 6.5))
    for values, name, style in ((uniform_values, "uniform", "step"), (model_values, label, "stepfilled")):
        top.hist(values[inside].numpy(), bins=edges, density=True, histtype=style, alpha=0.6, label=name)
    shown = "all levels" if last - first + 1 == num_bins else f"levels {first} to {last} of 0 to {num_bins - 1}"
    top.set_xlabel(f"dequantized value x + u ({shown})")
    top.set_ylabel("density")
    top.legend()

    noise_edges = np.linspace(0.0, 1.0, CELLS_PER_BIN * 2 + 1)
    for values, name, style in ((uniform_values, "uniform", "step"), (model_values, label, "stepfilled")):
        noise = (values - images).flatten().numpy()
        bottom.hist(noise, bins=noise_edges, density=True, histtype=style, alpha=0.6, label=name)
    bottom.set_xlabel("noise u = (x + u) - x inside the bin, all pixels")
    bottom.set_ylabel("density")
    bottom.legend()

    figure.suptitle("Dequantized test pixels: uniform noise and the run's dequantizer")
    figure.tight_layout()
    _save(figure, path)


def save_training_curve(path: str | Path, train_bpd: list[float], validation_bpd: list[float]) -> None:
    """Plot the mean training loss and the validation bound per epoch, in bits per dimension."""
    figure, axis = plt.subplots(figsize=(7, 4.5))
    epochs = np.arange(1, len(train_bpd) + 1)
    axis.plot(epochs, train_bpd, marker="o", label="training (mean over the epoch)")
    axis.plot(epochs, validation_bpd, marker="s", label="validation (one noise draw)")
    axis.xaxis.set_major_locator(MaxNLocator(integer=True))
    axis.set_xlabel("epoch")
    axis.set_ylabel("bits per dimension")
    axis.grid(alpha=0.3)
    axis.legend()
    figure.tight_layout()
    _save(figure, path)
