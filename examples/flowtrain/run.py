"""A whole training run: validate the input, train, evaluate and write the outputs.

`run_training` takes the options of `examples/train.py` and checks everything the user gave
(device, data, checkpoint, output folder) before it trains, so that invalid input fails with
a `UsageError` and leaves no output behind.
"""

from __future__ import annotations

import argparse
import hashlib
import logging
import math
import time
from pathlib import Path
from typing import Any

import torch
from torch.nn.parallel import DistributedDataParallel

from flowext import Dequantize
from flowext._numerics import resolvable_bins
from flowtrain.checkpoint import (
    FORMAT_VERSION,
    check_compatible,
    check_epochs,
    check_states,
    load_checkpoint,
    restore_states,
    save_checkpoint,
)
from flowtrain.data import ImageSplits, load_data
from flowtrain.distributed import DistributedContext, init_distributed, shutdown_distributed, world_from_environment
from flowtrain.errors import UsageError
from flowtrain.evaluation import evaluate_bpd, evaluate_iw_bpd, time_sampling
from flowtrain.files import atomic_open, atomic_write_json, prepare_output_dir
from flowtrain.model import FlowConfig, LogLikelihood, build_flow, count_parameters, dequantizer_of
from flowtrain.plots import save_dequantization_histogram, save_sample_grid, save_training_curve
from flowtrain.training import derive_seed, epoch_sampler, train_epoch

__all__ = ["OUTPUT_FILES", "resolve_device", "run_training"]

logger = logging.getLogger("flowtrain")

#: Files a finished run writes into its output folder.
OUTPUT_FILES = (
    "metrics.json",
    "samples.png",
    "dequantization.png",
    "training_curve.png",
    "checkpoint_best.pt",
    "checkpoint_last.pt",
)

#: Images whose dequantized values the histogram shows, at most.
HISTOGRAM_IMAGES = 512


def resolve_device(name: str | None) -> str:
    """Return the device type to train on: `name`, or "cuda" when available, else "cpu".

    Raises:
        UsageError: If the requested device is not available, or torchrun started more CUDA
            processes on this machine than it has GPUs.
    """
    if name is None:
        name = "cuda" if torch.cuda.is_available() else "cpu"
    if name == "cuda":
        if not torch.cuda.is_available():
            raise UsageError(
                f"--device cuda: CUDA is not available (PyTorch {torch.__version__}, built "
                f"{'without CUDA' if torch.version.cuda is None else 'for CUDA ' + torch.version.cuda}). "
                f"Pass --device cpu, or install a CUDA build of PyTorch on a machine with an NVIDIA GPU."
            )
        local_rank = world_from_environment()[2]
        if local_rank >= torch.cuda.device_count():
            raise UsageError(
                f"--device cuda: this process has local rank {local_rank}, but the machine has "
                f"{torch.cuda.device_count()} GPU(s). Pass --nproc_per_node at most "
                f"{torch.cuda.device_count()} to torchrun."
            )
    elif name == "mps":
        if not torch.backends.mps.is_available():
            raise UsageError("--device mps: the MPS back end is not available on this machine. Pass --device cpu.")
        if world_from_environment()[1] > 1:
            raise UsageError("--device mps supports one process only. Run without torchrun, or pass --device cpu.")
    elif name != "cpu":
        raise UsageError(f"invalid --device {name!r}; choose cpu, cuda or mps")
    return name


def flow_config_from(options: argparse.Namespace, splits: ImageSplits) -> FlowConfig:
    """Return the model configuration for the data and the command-line options."""
    return FlowConfig(
        shape=splits.shape,
        num_bins=splits.num_bins,
        dequantization=options.dequantization,
        num_layers=options.num_layers,
        hidden_channels=options.hidden_channels,
        num_blocks=options.num_blocks,
        channel_masks=options.channel_masks,
        alpha=options.alpha,
        noise_layers=options.noise_layers,
        noise_hidden_channels=options.noise_hidden_channels,
        context_channels=options.context_channels,
    )


def parameter_digest(module: torch.nn.Module) -> str:
    """Return the SHA-256 of all parameters and buffers, in state-dict order, as hex."""
    digest = hashlib.sha256()
    for name, tensor in module.state_dict().items():
        digest.update(name.encode("utf-8"))
        digest.update(tensor.detach().cpu().contiguous().numpy().tobytes())
    return digest.hexdigest()


def run_training(options: argparse.Namespace) -> dict[str, Any] | None:
    """Train and evaluate as the options request; return the metrics on rank 0, None on others.

    Raises:
        UsageError: For invalid input, before anything is written.
    """
    device_type = resolve_device(options.device)
    if options.threads is not None:
        torch.set_num_threads(options.threads)

    splits = load_data(
        options.dataset,
        idx_images=options.idx_images,
        patch_size=options.patch_size,
        grayscale=options.grayscale,
        num_bins=options.num_bins,
    )
    config = flow_config_from(options, splits)
    supported = resolvable_bins(torch.float32, config.alpha)
    if supported < 2:
        raise UsageError(
            f"--alpha {config.alpha} is too close to 1: after a Logit with this alpha, float32 "
            f"cannot resolve even 2 levels. Pass a smaller --alpha."
        )
    if config.num_bins > supported:
        raise UsageError(
            f"--alpha {config.alpha} with K = {config.num_bins} levels: float32 resolves at most "
            f"{supported} levels after a Logit with this alpha, because a larger alpha squeezes the "
            f"data into fewer float values. Pass a smaller --alpha or --num-bins."
        )

    checkpoint = None
    if options.resume is not None:
        where = f"--resume {str(options.resume)!r}"
        checkpoint = load_checkpoint(options.resume)
        check_compatible(checkpoint, config, splits.name, where)
        check_epochs(checkpoint, options.epochs, where)
        check_states(checkpoint, config, options.lr, where)

    rank = world_from_environment()[0]
    output_dir = prepare_output_dir(options.out) if rank == 0 else Path(options.out)
    if rank == 0 and options.resume is None and (output_dir / "metrics.json").exists():
        logger.warning(
            "%s contains the outputs of an earlier run. This run replaces them file by file, and "
            "until it ends the folder mixes both runs", output_dir,
        )
    if options.digest_dir is not None:
        prepare_output_dir(options.digest_dir, "--digest-dir")

    context = init_distributed(device_type)
    try:
        return _train_and_evaluate(options, splits, config, checkpoint, output_dir, context)
    finally:
        shutdown_distributed(context)


def _train_and_evaluate(
    options: argparse.Namespace,
    splits: ImageSplits,
    config: FlowConfig,
    checkpoint: dict[str, Any] | None,
    output_dir: Path,
    context: DistributedContext,
) -> dict[str, Any] | None:
    device = context.device
    num_dims = splits.num_dims

    torch.manual_seed(derive_seed(options.seed, "init"))
    flow = build_flow(config).to(device)
    optimizer = torch.optim.Adam(flow.parameters(), lr=options.lr)

    start_epoch = 0
    best_epoch = 0
    best_validation = math.inf
    best_state: dict[str, torch.Tensor] | None = None
    history: dict[str, list[float]] = {"train_bpd": [], "validation_bpd": [], "epoch_seconds": []}
    train_seconds = 0.0
    if checkpoint is not None:
        restore_states(checkpoint, flow, optimizer, f"--resume {str(options.resume)!r}")
        for group in optimizer.param_groups:
            group["lr"] = options.lr
        start_epoch = int(checkpoint["epoch"])
        best_epoch = int(checkpoint["best_epoch"])
        best_validation = float(checkpoint["best_validation_bpd"])
        best_state = checkpoint["best_model"]
        history = {key: list(values) for key, values in checkpoint["history"].items()}
        train_seconds = float(checkpoint["train_seconds"])
        logger.info("resumed from %s after epoch %d (best epoch %d)", options.resume, start_epoch, best_epoch)
        if start_epoch == options.epochs:
            logger.info("the checkpoint has all %d epochs, so the run evaluates without training", start_epoch)

    model: torch.nn.Module = LogLikelihood(flow)
    if context.enabled:
        device_ids = [device] if device.type == "cuda" else None
        model = DistributedDataParallel(model, device_ids=device_ids)

    train_images = splits.train.to(device=device, dtype=torch.float32)
    validation_images = splits.validation.to(device=device, dtype=torch.float32)
    test_images = splits.test.to(device=device, dtype=torch.float32)
    sampler = epoch_sampler(len(train_images), context, options.seed)
    logger.info(
        "%s: %d training, %d validation, %d test images of shape %s, K = %d; %s dequantization, "
        "%d parameters; %d process(es) on %s",
        splits.name, len(train_images), len(validation_images), len(test_images), splits.shape,
        splits.num_bins, config.dequantization, count_parameters(flow), context.world_size, device,
    )

    for epoch in range(start_epoch, options.epochs):
        started = time.perf_counter()
        train_bpd = train_epoch(
            model,
            optimizer,
            train_images,
            sampler,
            epoch=epoch,
            batch_size=options.batch_size,
            num_dims=num_dims,
            max_grad_norm=options.max_grad_norm,
            max_steps=options.steps_per_epoch,
            seed=options.seed,
            context=context,
            progress=options.progress,
        )
        torch.manual_seed(derive_seed(options.seed, "evaluate", epoch, context.rank))
        validation = evaluate_bpd(flow, validation_images, batch_size=options.eval_batch_size, context=context)
        if not math.isfinite(validation.bpd):
            # The last step's update can break the model after its loss was checked.
            raise FloatingPointError(
                f"the validation bpd became {validation.bpd} after epoch {epoch + 1}; "
                f"lower --lr or --max-grad-norm"
            )
        seconds = time.perf_counter() - started
        train_seconds += seconds

        history["train_bpd"].append(train_bpd)
        history["validation_bpd"].append(validation.bpd)
        history["epoch_seconds"].append(seconds)
        improved = validation.bpd < best_validation
        if improved:
            best_epoch, best_validation = epoch + 1, validation.bpd
            best_state = {name: tensor.detach().cpu().clone() for name, tensor in flow.state_dict().items()}
        logger.info(
            "epoch %d/%d: training %.4f bpd, validation %.4f bpd%s, %.1f s",
            epoch + 1, options.epochs, train_bpd, validation.bpd, " (best)" if improved else "", seconds,
        )

        if context.is_main:
            state = {
                "format_version": FORMAT_VERSION,
                "config": config.to_dict(),
                "dataset": splits.name,
                "model": {name: tensor.detach().cpu() for name, tensor in flow.state_dict().items()},
                "best_model": best_state,
                "optimizer": optimizer.state_dict(),
                "epoch": epoch + 1,
                "best_epoch": best_epoch,
                "best_validation_bpd": best_validation,
                "history": history,
                "train_seconds": train_seconds,
            }
            save_checkpoint(output_dir / "checkpoint_last.pt", state)
            if improved:
                save_checkpoint(output_dir / "checkpoint_best.pt", state | {"model": best_state})

    if options.digest_dir is not None:
        digest_path = Path(options.digest_dir) / f"rank{context.rank}.sha256"
        with atomic_open(digest_path) as handle:
            handle.write((parameter_digest(flow) + "\n").encode("ascii"))

    if best_state is not None:
        flow.load_state_dict(best_state)

    torch.manual_seed(derive_seed(options.seed, "test", 0, context.rank))
    test = evaluate_bpd(flow, test_images, batch_size=options.eval_batch_size, context=context)
    test_iw = evaluate_iw_bpd(
        flow, test_images, num_samples=options.iw_samples, batch_size=options.eval_batch_size, context=context
    )
    for name, result in (("test bpd", test.bpd), ("importance-weighted test bpd", test_iw.bpd)):
        if not math.isfinite(result):
            raise FloatingPointError(f"the {name} is {result}, so the model is broken; lower --lr or --max-grad-norm")
    if not context.is_main:
        return None

    samples, sample_seconds = time_sampling(flow, options.num_sample_images)
    _write_figures(output_dir, flow, samples, test_images, splits.num_bins, config.dequantization, history)

    dequantizer_parameters = count_parameters(dequantizer_of(flow))
    metrics = {
        "dataset": splits.name,
        "num_bins": splits.num_bins,
        "image_shape": list(splits.shape),
        "num_dims": num_dims,
        "num_images": {"train": len(train_images), "validation": len(validation_images), "test": len(test_images)},
        "dequantization": config.dequantization,
        "parameters": {
            "total": count_parameters(flow),
            "flow": count_parameters(flow) - dequantizer_parameters,
            "dequantizer": dequantizer_parameters,
        },
        "epochs": len(history["train_bpd"]),
        "best_epoch": best_epoch,
        "best_validation_bpd": best_validation,
        "test_bpd": test.bpd,
        "test_iw_bpd": test_iw.bpd,
        "iw_samples": options.iw_samples,
        "train_seconds": train_seconds,
        "eval_batch_size": options.eval_batch_size,
        "eval_seconds_per_batch": test.seconds_per_batch,
        "iw_eval_seconds_per_batch": test_iw.seconds_per_batch,
        "sample_batch_size": options.num_sample_images,
        "sample_seconds_per_batch": sample_seconds,
        "history": history,
        "config": config.to_dict(),
        "training": {
            "batch_size": options.batch_size,
            "lr": options.lr,
            "max_grad_norm": options.max_grad_norm,
            "steps_per_epoch": options.steps_per_epoch,
            "seed": options.seed,
        },
        "device": str(context.device),
        "world_size": context.world_size,
        "torch_threads": torch.get_num_threads(),
    }
    atomic_write_json(output_dir / "metrics.json", metrics)
    return metrics


def _write_figures(
    output_dir: Path,
    flow: torch.nn.Module,
    samples: torch.Tensor,
    test_images: torch.Tensor,
    num_bins: int,
    dequantization: str,
    history: dict[str, list[float]],
) -> None:
    save_sample_grid(output_dir / "samples.png", samples, num_bins)

    images = test_images[:HISTOGRAM_IMAGES]
    with torch.no_grad():
        model_values, _ = dequantizer_of(flow)(images)
    uniform_values = Dequantize(num_bins)(images)
    save_dequantization_histogram(
        output_dir / "dequantization.png",
        images,
        uniform_values,
        model_values,
        num_bins=num_bins,
        label=f"{dequantization} (this model)",
    )

    save_training_curve(output_dir / "training_curve.png", history["train_bpd"], history["validation_bpd"])
