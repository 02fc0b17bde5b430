"""Building blocks of examples/train.py: data, model, training step, evaluation and outputs.

Modules:
    data: the digits, photo patches and IDX files as integer image tensors, split and checked
    coupling: `CheckerboardAffineCoupling`, an nflows transform for images
    model: `FlowConfig` and `build_flow`
    training: `train_step` and `train_epoch`
    evaluation: one-draw and importance-weighted bits per dimension, sampling time
    checkpoint: checkpoints that load with `torch.load(weights_only=True)`
    files: atomic writes and the output folder check
    plots: the PNG figures
    distributed: torchrun and DistributedDataParallel set-up
    run: a whole run, as the command line starts it

Scripts put the `examples` folder on `sys.path` and import `flowtrain`.
"""

from flowtrain.model import FlowConfig, build_flow
from flowtrain.training import train_step

__all__ = ["FlowConfig", "build_flow", "train_step"]
