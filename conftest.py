"""Shared pytest set-up: a seeded generator and `torch` in every docstring example."""

import math

import pytest
import torch


@pytest.fixture(autouse=True)
def _seed_torch():
    torch.manual_seed(0)


@pytest.fixture(autouse=True)
def _doctest_namespace(doctest_namespace):
    import flowext

    doctest_namespace["torch"] = torch
    doctest_namespace["math"] = math
    for name in flowext.__all__:
        doctest_namespace[name] = getattr(flowext, name)
