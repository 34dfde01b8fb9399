"""The training loops' learning-rate schedule."""

from __future__ import annotations

import math

import pytest
import torch

from rayrec.config import TrainConfig
from rayrec.train.loop import set_scheduled_lr


def _lr_curve(t: TrainConfig, epochs: int, steps: int | None) -> list[float]:
    opt = torch.optim.AdamW([torch.nn.Parameter(torch.zeros(1))], lr=1.0)
    out = []
    for epoch in range(epochs):
        for step in range(steps or 3):
            set_scheduled_lr(opt, t, 0.01, epochs, epoch, step, steps)
            out.append(opt.param_groups[0]["lr"])
    return out


def test_cosine_decays_from_lr_to_its_floor_and_constant_stays():
    curve = _lr_curve(TrainConfig(lr_schedule="cosine", lr_floor=0.1), epochs=2, steps=5)
    assert curve[0] == pytest.approx(0.01) and curve[-1] == pytest.approx(0.001)
    assert all(a > b for a, b in zip(curve, curve[1:]))
    assert curve[4] == pytest.approx(0.001 + 0.009 * 0.5 * (1 + math.cos(math.pi * 4 / 9)))  # position, not history
    assert set(_lr_curve(TrainConfig(lr_schedule="constant"), epochs=2, steps=None)) == {0.01}


def test_cosine_without_the_steps_per_epoch_is_refused():
    with pytest.raises(ValueError, match="steps per epoch"):
        _lr_curve(TrainConfig(lr_schedule="cosine"), epochs=1, steps=None)
