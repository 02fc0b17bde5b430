"""Pyro integration: a learned variational dequantizer as a Pyro `TransformModule`.

Importing this module imports Pyro and nflows (`pip install flowext[pyro,nflows]`). Importing
Pyro patches torch classes (Pyro 1.9 replaces `torch.distributions.Transform.__getstate__`, for
one), which is why `import flowext` alone does not import this module.
"""

from flowext.pyro.variational import VariationalDequantization

__all__ = ["VariationalDequantization"]
