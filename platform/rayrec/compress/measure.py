"""What a compression trial is judged on besides quality: parameter counts, serialized size and the
CPU latency of scoring one request; shared by Ray Tune trials and the compression benchmark.

All three work on float, pruned (masked or made permanent), shrunk and int8-quantized models alike.
"""

from __future__ import annotations

import io
import time
from collections.abc import Mapping

import numpy as np
import torch
from torch import nn
from torch.ao.nn.quantized.dynamic import Linear as QuantizedLinear

from rayrec.models.ranker import COLLABORATIVE_BUFFERS, Ranker, RankerSpec, inference_graph

RankerRequest = tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]


def _module_tensors(module: nn.Module) -> list[torch.Tensor]:
    """The weights ``module`` itself holds, as the forward pass sees them."""
    tensors = []
    for name, p in module.named_parameters(recurse=False):
        mask = getattr(module, name[: -len("_orig")] + "_mask", None) if name.endswith("_orig") else None
        tensors.append(p.detach() if mask is None else p.detach() * mask)
    if isinstance(module, QuantizedLinear):  # packed int8 weights are not Parameters
        tensors.append(module.weight().dequantize())
        if module.bias() is not None:
            tensors.append(module.bias().detach())
    return tensors


def parameter_count(model: nn.Module) -> dict[str, int]:
    """``{"total": n, "nonzero": k}`` over every weight and bias (a shared module counted once);
    unstructured pruning lowers ``nonzero`` only, structured shrinking lowers both."""
    total = nonzero = 0
    for module in model.modules():
        for t in _module_tensors(module):
            total += t.numel()
            nonzero += int(torch.count_nonzero(t))
    return {"total": total, "nonzero": nonzero}


def model_size_bytes(model: nn.Module) -> int:
    """Bytes of ``torch.save(model.state_dict())`` without ``COLLABORATIVE_BUFFERS`` (a ranker's ALS item
    table: data fitted beside the model, the same in every compressed variant and untouched by
    compression; its own size is n_items x collaborative_factors float32): int8 weights count one byte
    each. Dense storage, so zeroed weights cost as much as any other (and a model still carrying pruning
    masks stores both ``weight_orig`` and ``weight_mask``: measure after ``make_permanent``)."""
    buffer = io.BytesIO()
    torch.save({k: v for k, v in model.state_dict().items() if k not in COLLABORATIVE_BUFFERS}, buffer)
    return buffer.getbuffer().nbytes


def random_request(spec: RankerSpec, n_candidates: int, history_length: int = 20, seed: int = 0,
                   requests: int = 1) -> RankerRequest:
    """``requests`` requests' inputs for ``Ranker.forward`` (1: one request): a unit-norm user vector, a full
    history of item ids with increasing gaps (seconds), ``n_candidates`` candidate ids, their
    retrieval cosines and trend counts. Random but shaped like serving traffic, which is all latency
    depends on."""
    if spec.n_items < 3:
        raise ValueError("the ranker needs at least one real item id (>= 2) to build a request")
    g = torch.Generator().manual_seed(seed)
    b = requests
    user = torch.nn.functional.normalize(torch.randn(b, spec.user_dim, generator=g), dim=-1)
    hist = torch.randint(2, spec.n_items, (b, history_length), generator=g)
    gaps = torch.sort(torch.rand(b, history_length, generator=g) * 30 * 86400, descending=True).values
    cand = torch.randint(2, spec.n_items, (b, n_candidates), generator=g)
    score = torch.rand(b, n_candidates, generator=g) * 2 - 1
    trend = torch.randint(0, 100, (b, n_candidates), generator=g).float()
    return user, hist, gaps, cand, score, trend


def scoring_latency(ranker: Ranker, n_candidates: int = 200, repeats: int = 50, *, threads: int = 1,
                    warmup: int = 5, history_length: int = 20, seed: int = 0,
                    torchscript: bool = True) -> dict[str, float]:
    """p50/p99/mean milliseconds to score one request of ``n_candidates`` on CPU with ``threads`` torch
    threads (fixed so numbers compare across trials; restored afterwards), in the form serving runs
    (TorchScript unless ``torchscript`` is false). Inference mode, eval mode."""
    return interleaved_latency({"model": ranker}, n_candidates, repeats, threads=threads, warmup=warmup,
                               history_length=history_length, seed=seed, torchscript=torchscript)["model"]


def interleaved_latency(rankers: Mapping[str, Ranker], n_candidates: int = 200, repeats: int = 50, *,
                        threads: int = 1, warmup: int = 5, history_length: int = 20, seed: int = 0,
                        requests: int = 1, torchscript: bool = True) -> dict[str, dict[str, float]]:
    """``scoring_latency`` of several rankers measured in turns (one call each per round), so a busy
    moment on a shared machine slows every model alike instead of whichever ran then; ``requests``
    requests are scored per call (the ranking deployment merges a batch of requests into one call).
    ``torchscript``: time ``inference_graph`` of each ranker, as the ranking deployment scores by default."""
    for name, ranker in rankers.items():
        device = next(iter(ranker.buffers())).device
        if device.type != "cpu":
            raise ValueError(f"scoring_latency measures CPU serving; ranker {name!r} is on {device}")
    inputs = {name: random_request(r.spec, n_candidates, history_length, seed, requests)
              for name, r in rankers.items()}
    previous = torch.get_num_threads()
    torch.set_num_threads(threads)
    modes = {name: r.training for name, r in rankers.items()}
    times: dict[str, list[float]] = {name: [] for name in rankers}
    try:
        scorers = {name: inference_graph(r) if torchscript else r.eval() for name, r in rankers.items()}
        with torch.inference_mode():
            for round_no in range(warmup + repeats):
                for name, scorer in scorers.items():
                    t0 = time.perf_counter()
                    scorer(*inputs[name])
                    if round_no >= warmup:
                        times[name].append((time.perf_counter() - t0) * 1e3)
    finally:
        torch.set_num_threads(previous)
        for name, r in rankers.items():
            r.train(modes[name])
    out = {}
    for name, values in times.items():
        ms = np.asarray(values)
        out[name] = {"p50_ms": float(np.percentile(ms, 50)), "p99_ms": float(np.percentile(ms, 99)),
                     "mean_ms": float(ms.mean()), "n_candidates": n_candidates, "threads": threads,
                     "repeats": repeats, "requests": requests, "torchscript": torchscript}
    return out
