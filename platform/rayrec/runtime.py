"""Process-level runtime: the only place that calls ``ray.init``, and thread settings for workers.

Every stage calls ``init_ray`` so that the same command runs on a laptop (a local Ray is started)
and on a cluster (``RAY_ADDRESS`` or ``ray.address`` in the config is joined), e.g. under
``ray job submit``.
"""

from __future__ import annotations

import logging
import os

from rayrec.config import RayConfig

THREAD_ENV = ("OMP_NUM_THREADS", "MKL_NUM_THREADS", "OPENBLAS_NUM_THREADS")


def worker_env(threads: int = 1) -> dict[str, str]:
    """Environment for Ray workers: one BLAS/OpenMP thread each, so 2 cores are not oversubscribed."""
    return {name: str(threads) for name in THREAD_ENV}


def set_threads(threads: int = 1) -> None:
    """Pin torch/BLAS threads in this process (call at the top of every replica and worker)."""
    for name, value in worker_env(threads).items():
        os.environ.setdefault(name, value)
    try:
        import torch

        torch.set_num_threads(threads)
    except ImportError:  # data-only installs
        pass


# Ray Train's placement-group cleaner polls the State API, which needs the dashboard; a local Ray
# runs without one (it costs a core's worth of start-up on 2 CPUs), so the cleaner warns every
# few seconds that the API is unavailable. Nothing is wrong: the run cleans up its own group.
NOISY_WORKER_LOGGERS = ("ray.train.v2._internal.execution.controller.placement_group_cleaner",)


def quiet_worker_logs() -> None:
    """Ray worker set-up hook: silence known-harmless warnings that would flood the driver's output."""
    for name in NOISY_WORKER_LOGGERS:
        logging.getLogger(name).setLevel(logging.ERROR)


def init_ray(cfg: RayConfig | None = None) -> None:
    """Join the configured cluster, or start a local Ray; a no-op when Ray is already up."""
    import ray

    if ray.is_initialized():
        return
    cfg = cfg or RayConfig()
    address = cfg.address or os.environ.get("RAY_ADDRESS")
    runtime_env = {"env_vars": worker_env(), "worker_process_setup_hook": "rayrec.runtime.quiet_worker_logs"}
    if address:
        missing = {k: v for k, v in cfg.env.items() if os.environ.get(k) != v}
        if missing:  # the cluster's processes started with their own environment; this cannot change it
            logging.getLogger(__name__).warning("ray.env %s is not this process's environment; joining %s, the "
                                                "cluster's nodes must set it themselves", missing, address)
        ray.init(address=address, runtime_env=runtime_env, logging_level=logging.WARNING)
        _quiet_ray_data()
        return
    os.environ.update(cfg.env)  # inherited by the raylet, so by Serve's controller, proxy and replicas
    ray.init(
        num_cpus=cfg.num_cpus,
        num_gpus=cfg.num_gpus,
        object_store_memory=cfg.object_store_memory_mb * 2**20 if cfg.object_store_memory_mb else None,
        include_dashboard=False,
        runtime_env=runtime_env,
        logging_level=logging.WARNING,
        configure_logging=True,
    )
    _quiet_ray_data()


def _quiet_ray_data() -> None:
    """Ray Data's per-operator progress bars fight with rich's; the CLI shows its own progress."""
    from ray.data import DataContext

    from ray.data.context import ShuffleStrategy

    ctx = DataContext.get_current()
    ctx.enable_progress_bars = False
    ctx.print_on_execution_start = False
    # Hash shuffle starts long-lived aggregator actors (200 partitions by default): on a 2-core
    # machine that costs more than it saves, and we saw one abort in a mutex check. Sort-based
    # shuffle runs as plain tasks.
    ctx.shuffle_strategy = ShuffleStrategy.SORT_SHUFFLE_PULL_BASED
    logging.getLogger("ray.data").setLevel(logging.WARNING)
