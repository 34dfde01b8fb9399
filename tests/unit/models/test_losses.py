"""The ranker's distillation loss: labels only at share 0, the teacher's optimum at share 1."""

from __future__ import annotations

import torch

from rayrec.models.losses import distillation_bce, multi_task_bce


def _data(seed: int = 0):
    g = torch.Generator().manual_seed(seed)
    labels = (torch.rand(32, 2, generator=g) < 0.3).float()
    return torch.randn(32, 2, generator=g), labels, torch.randn(32, 2, generator=g) * 2


def test_share_zero_is_the_label_loss():
    logits, labels, teacher = _data()
    assert torch.equal(distillation_bce(logits, labels, teacher, 0.0), multi_task_bce(logits, labels))


def test_full_distillation_is_minimised_by_the_teachers_logits():
    _, labels, teacher = _data()
    student = teacher.clone().requires_grad_(True)
    distillation_bce(student, labels, teacher, 1.0).backward()
    assert student.grad.abs().max() < 1e-6  # the teacher's logits are the optimum: the labels pull not at all
    student.grad = None
    distillation_bce(student, labels, teacher, 0.5).backward()
    assert student.grad.abs().max() > 1e-3  # with half the labels they do


def test_a_blend_sits_between_labels_and_teacher_and_ignores_masked_rows():
    logits, labels, teacher = _data()
    half = distillation_bce(logits, labels, teacher, 0.5)
    hard = multi_task_bce(logits, labels)
    soft = multi_task_bce(logits, torch.sigmoid(teacher))
    assert torch.isclose(half, (hard + soft) / 2)
    mask = torch.ones(32, 1)
    mask[:16] = 0
    changed = teacher.clone()
    changed[:16] = -teacher[:16]
    assert torch.isclose(distillation_bce(logits, labels, teacher, 0.5, mask),
                         distillation_bce(logits, labels, changed, 0.5, mask))
