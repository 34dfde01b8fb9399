"""`build_app`: the one place to read the serving graph, and the builder `serve deploy` imports.

    HTTP → Retrieval (FastAPI ingress; per batch: feature store, user tower, FAISS;
               │          search: tantivy + MiniLM/FAISS, fused)
               └→ Ranking (ranker; once per retrieval or search batch)
    Retrieval → feature store (POST /v1/events)

Every deployment takes replicas or autoscaling, queue limits and CPU/GPU fractions from
``serve.<stage>`` in the config. ``configs/serve.yaml`` points Serve at ``app_builder`` with the
rayrec config to read, so ``serve deploy``/``serve run`` and ``rayrec serve`` build the same graph.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from ray import serve
from ray.serve import Application

from rayrec.config import DeploymentConfig, RayrecConfig, ServeConfig, load_config
from rayrec.release import load_release, release_root, resolve_release
from rayrec.runtime import worker_env
from rayrec.serve.api import Retrieval
from rayrec.serve.ranking import Ranking


def serve_logging(s: ServeConfig) -> dict[str, Any]:
    """Serve's logging for its own components (``serve.start``) and for each deployment alike."""
    return {"log_level": s.log_level, "enable_access_log": s.access_log}


def replica_env(d: DeploymentConfig, s: ServeConfig) -> dict[str, str]:
    """Threads, and where Serve runs replica code: Serve reads these when the replica process imports
    it, so they are set per replica rather than on the driver."""
    env = worker_env(d.threads)
    if s.user_code_thread == "shared":
        env |= {"RAY_SERVE_RUN_USER_CODE_IN_SEPARATE_THREAD": "0", "RAY_SERVE_RUN_ROUTER_IN_SEPARATE_LOOP": "0"}
    return env


def deployment_options(d: DeploymentConfig, s: ServeConfig) -> dict[str, Any]:
    """Serve deployment options from one stage's config section."""
    options: dict[str, Any] = {
        "max_ongoing_requests": d.max_ongoing_requests,
        "max_queued_requests": d.max_queued_requests,
        "health_check_period_s": d.health_check_period_s,
        "health_check_timeout_s": d.health_check_timeout_s,
        "graceful_shutdown_timeout_s": d.graceful_shutdown_timeout_s,
        # A full queue is refused by Serve itself (proxy or handle) with 503 and Retry-After.
        "backpressure_config": {"status_code": 503, "retry_after_s": s.retry_after_s},
        "logging_config": serve_logging(s),
        "ray_actor_options": {"num_cpus": d.num_cpus, "num_gpus": d.num_gpus,
                              "runtime_env": {"env_vars": replica_env(d, s)}},
    }  # fmt: skip
    if d.num_replicas is not None:
        options["num_replicas"] = d.num_replicas
    else:
        a = d.autoscaling
        options["autoscaling_config"] = {
            "min_replicas": a.min_replicas, "max_replicas": a.max_replicas,
            "initial_replicas": max(a.min_replicas, 1),
            "target_ongoing_requests": a.target_ongoing_requests, "upscale_delay_s": a.upscale_delay_s,
            "downscale_delay_s": a.downscale_delay_s, "metrics_interval_s": a.metrics_interval_s,
            "look_back_period_s": a.look_back_period_s,
        }  # fmt: skip
    return options


def serving_config(cfg: RayrecConfig, base_dir: Path | None = None) -> dict[str, Any]:
    """The serve section with every path absolute (replicas do not share the driver's working
    folder); relative paths are taken from ``base_dir`` (default: this process's folder)."""
    base = Path(base_dir or Path.cwd())
    s = cfg.serve.model_copy(deep=True)
    root = base / release_root(cfg)
    s.release_dir = str(root.resolve())
    s.feature_store.dir = str((base / s.feature_store.dir).resolve() if s.feature_store.dir
                              else root.resolve() / "feature_store")
    return s.model_dump(mode="json")


def build_app(cfg: RayrecConfig, version: str | None = None, base_dir: Path | None = None) -> Application:
    serve_cfg = serving_config(cfg, base_dir)
    release = resolve_release(Path(serve_cfg["release_dir"]), version or cfg.serve.version).resolve()
    manifest = load_release(release).manifest  # a corrupt release is refused here, before the running app is touched
    s = cfg.serve
    ranking = None
    if s.use_ranker and manifest.has_ranker:
        ranking = (serve.deployment(Ranking, name="Ranking").options(**deployment_options(s.ranking, s))
                   .bind(str(release), serve_cfg, cfg.ranker.purchase_weight))
    retrieval = serve.deployment(Retrieval, name="Retrieval").options(**deployment_options(s.retrieval, s))
    return retrieval.bind(str(release), serve_cfg, ranking, cfg.search.model_dump(mode="json"))


def app_builder(args: dict[str, Any]) -> Application:
    """For ``serve deploy``/``serve run``: ``args: {config, set: [section.key=value, ...], base_dir}``.
    ``base_dir`` is the folder relative paths (the config file, releases) are read from: Serve builds
    the app in a process whose working folder is not yours."""
    base = Path(args["base_dir"]) if args.get("base_dir") else None
    config = args.get("config")
    if config is not None and base is not None and not Path(config).is_absolute():
        config = base / config
    return build_app(load_config(config, list(args.get("set") or [])), base_dir=base)
