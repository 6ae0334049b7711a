"""Fixtures of the calibration tests: the sharp 2-D target and a fine fixed-step stand-in reference."""

from __future__ import annotations

import pytest
import torch

import sdediff as sd
from sdediff.bench_targets import TARGETS


@pytest.fixture(scope="module")
def target():
    return TARGETS["2d-sharp"]()


@pytest.fixture(scope="module")
def fine(target):
    """An accurate stand-in reference (fixed-step, 300 third-order steps: far below the errors at NFE 5-6)."""
    model = target.model

    def ref(x: torch.Tensor) -> torch.Tensor:
        with torch.no_grad():
            return sd.sample(model, tuple(x.shape), solver="unipc3", steps=300, grid="logsnr", x_T=x).x

    return ref
