"""Unstructured magnitude pruning on a gradual schedule: masks, the schedule, and per-module sparsity.

This kind of pruning *zeroes* weights; it does not shrink a tensor, so a pruned model is exactly as
large on disk and as slow on a dense CPU kernel as before (``compression.unstructured.kind`` says
``"unstructured"`` for that reason). It pays off only with sparse kernels or a compressing store;
``shrink.py`` is the stage that really removes units.

The schedule is Zhu & Gupta (2017), "To prune, or not to prune": the target sparsity rises as
``s_t = s_f + (s_i - s_f) * (1 - t / T)^3``, fast at first while many weights are redundant and
slowly near the end, so training can recover between steps. Masks come from
``torch.nn.utils.prune`` (``l1_unstructured`` per layer, or ``global_unstructured`` across all
targets); a training loop calls ``pruner.step()`` once per optimizer step and ``make_permanent``
once training ends.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any, Literal

import torch
from torch import nn
from torch.nn.utils import prune

from rayrec.models.ranker import Ranker

Scope = Literal["layer", "global"]
WEIGHT = "weight"


def cubic_sparsity(step: int, final_sparsity: float, total_steps: int, *, initial_sparsity: float = 0.0,
                   begin_step: int = 0) -> float:
    """Zhu & Gupta's target sparsity after ``step`` optimizer steps (flat before ``begin_step`` and after the end)."""
    t = min(max(step - begin_step, 0), total_steps) / total_steps
    return final_sparsity + (initial_sparsity - final_sparsity) * (1.0 - t) ** 3


def ranker_prune_targets(model: Ranker) -> dict[str, nn.Module]:
    """The Ranker's weight matrices worth pruning, by qualified name: embedding tables, cross ``down``/``up``
    and the deep MLP. The LayerNorm, biases and the 2-output head are left dense: they are a
    rounding error of the parameter count and the head sits right on the logits."""
    targets: dict[str, nn.Module] = {}
    for name, module in model.named_modules():
        if isinstance(module, (nn.Linear, nn.Embedding)) and name != "head":
            targets[name] = module
    return targets


def _mask(module: nn.Module) -> torch.Tensor | None:
    return getattr(module, WEIGHT + "_mask", None)


def _effective_weight(module: nn.Module) -> torch.Tensor:
    """The weight the forward pass sees. ``module.weight`` itself is only refreshed by the forward
    pre-hook, so after an optimizer step it is one step stale; recompute it from orig × mask."""
    mask = _mask(module)
    if mask is None:
        return getattr(module, WEIGHT).detach()
    return getattr(module, WEIGHT + "_orig").detach() * mask


def sparsity_report(targets: Mapping[str, nn.Module]) -> dict[str, float]:
    """Share of zero weights per target and ``"overall"`` (weighted by size); works before, during and
    after pruning. Counts zeros, not masks, so an embedding's padding row (always zero) counts too."""
    report: dict[str, float] = {}
    zeros = total = 0
    for name, module in targets.items():
        w = _effective_weight(module)
        z = int((w == 0).sum())
        report[name] = z / w.numel()
        zeros, total = zeros + z, total + w.numel()
    report["overall"] = zeros / max(total, 1)
    return report


def is_reparametrised(model: nn.Module) -> bool:
    """True while ``torch.nn.utils.prune`` masks are attached (``weight_orig`` + ``weight_mask``)."""
    return prune.is_pruned(model)


class GradualMagnitudePruner:
    """Raises the share of zero weights in ``targets`` along the cubic schedule, one ``step()`` per
    optimizer step. Masks only ever grow: a weight pruned once stays at zero.

    Identity masks are attached at construction so the state-dict keys (``weight_orig``,
    ``weight_mask``) do not change mid-training; a checkpoint written while pruning therefore needs
    a pruner attached to the fresh model before ``load_state_dict``, and ``steps_done`` set to the
    steps already taken. The reparametrisation keeps the Parameter objects (``weight`` becomes
    ``weight_orig``), so an optimizer built before or after the pruner updates the same tensors.
    """

    def __init__(self, targets: Mapping[str, nn.Module], final_sparsity: float, total_steps: int, *,
                 begin_step: int = 0, every: int = 1, scope: Scope = "layer") -> None:
        if not 0.0 <= final_sparsity < 1.0:
            raise ValueError(f"final_sparsity must be in [0, 1), got {final_sparsity}")
        if total_steps < 1 or every < 1 or begin_step < 0:
            raise ValueError("total_steps and every must be >= 1 and begin_step >= 0")
        if scope not in ("layer", "global"):
            raise ValueError(f"scope must be 'layer' or 'global', got {scope!r}")
        self.targets = dict(targets)
        self.final_sparsity = final_sparsity
        self.total_steps = total_steps
        self.begin_step = begin_step
        self.every = every
        self.scope = scope
        self.steps_done = 0
        self.current_target = 0.0
        for module in self.targets.values():
            if _mask(module) is None:
                prune.identity(module, WEIGHT)

    @property
    def end_step(self) -> int:
        return self.begin_step + self.total_steps

    def target_at(self, step: int) -> float:
        return cubic_sparsity(step, self.final_sparsity, self.total_steps, begin_step=self.begin_step)

    def step(self) -> float:
        """Advance one optimizer step; prune up to the schedule every ``every`` steps and always at the
        last one. Returns the target sparsity now in force."""
        self.steps_done += 1
        s = self.steps_done
        due = s >= self.begin_step and ((s - self.begin_step) % self.every == 0 or s == self.end_step)
        if due and s <= self.end_step:
            self.prune_to(self.target_at(s))
        return self.current_target

    def prune_to(self, sparsity: float) -> None:
        """Zero the smallest-magnitude weights until ``sparsity`` of each target (or of all, globally) is zero.
        Integer amounts: a fractional ``amount`` would be taken of the weights still unpruned."""
        self.current_target = max(self.current_target, sparsity)
        if self.scope == "global":
            self._prune_global(self.current_target)
            return
        for module in self.targets.values():
            extra = _missing_zeros(module, self.current_target)
            if extra > 0:
                prune.l1_unstructured(module, WEIGHT, amount=extra, importance_scores=_effective_weight(module))

    def _prune_global(self, sparsity: float) -> None:
        modules = list(self.targets.values())
        total = sum(m.weight_orig.numel() for m in modules)
        pruned = sum(int((_mask(m) == 0).sum()) for m in modules)
        extra = round(sparsity * total) - pruned
        if extra > 0:
            prune.global_unstructured([(m, WEIGHT) for m in modules], pruning_method=prune.L1Unstructured,
                                      importance_scores={(m, WEIGHT): _effective_weight(m) for m in modules},
                                      amount=extra)

    def report(self) -> dict[str, float]:
        return sparsity_report(self.targets)

    def summary(self) -> dict[str, Any]:
        """What goes into a bundle's ``meta["compression"]["unstructured"]``."""
        per_module = self.report()
        return {"kind": "unstructured", "schedule": "cubic", "scope": self.scope,
                "final_sparsity": self.final_sparsity, "total_steps": self.total_steps,
                "sparsity": per_module.pop("overall"), "per_module": per_module}


def _missing_zeros(module: nn.Module, sparsity: float) -> int:
    mask = _mask(module)
    assert mask is not None  # the pruner attaches an identity mask to every target
    return round(sparsity * mask.numel()) - int((mask == 0).sum())


def make_permanent(model: nn.Module) -> nn.Module:
    """Fold every pruning mask into its weight and drop the reparametrisation: plain ``weight``
    Parameters again (same objects, so an optimizer holding them keeps working), state-dict keys as
    for an unpruned model, no forward pre-hooks. Zeros stay zeros."""
    for module in model.modules():
        names = [h._tensor_name for h in list(module._forward_pre_hooks.values())
                 if isinstance(h, prune.BasePruningMethod)]
        for name in names:
            prune.remove(module, name)
    return model
