"""Deployment options come from the config alone: queues, Retry-After, access logs, threads and where
Serve runs replica code."""

from rayrec.config import RayrecConfig, with_values
from rayrec.serve.app import deployment_options


def test_options_carry_queues_backpressure_and_replica_environment():
    cfg = with_values(RayrecConfig(), {"serve.retry_after_s": 2, "serve.ranking.num_gpus": 0.25,
                                       "serve.ranking.threads": 2, "serve.ranking.num_replicas": 3})
    options = deployment_options(cfg.serve.ranking, cfg.serve)
    assert options["num_replicas"] == 3 and "autoscaling_config" not in options
    assert options["backpressure_config"] == {"status_code": 503, "retry_after_s": 2}
    assert options["logging_config"] == {"log_level": "WARNING", "enable_access_log": False}
    actor = options["ray_actor_options"]
    assert actor["num_gpus"] == 0.25
    env = actor["runtime_env"]["env_vars"]
    assert env["OMP_NUM_THREADS"] == "2"
    assert env["RAY_SERVE_RUN_USER_CODE_IN_SEPARATE_THREAD"] == "0"


def test_autoscaling_and_serves_own_thread_when_asked():
    cfg = with_values(RayrecConfig(), {"serve.user_code_thread": "separate", "serve.access_log": True,
                                       "serve.log_level": "INFO",
                                       "serve.retrieval.autoscaling.max_replicas": 4})
    options = deployment_options(cfg.serve.retrieval, cfg.serve)
    assert options["autoscaling_config"]["max_replicas"] == 4 and "num_replicas" not in options
    assert options["logging_config"] == {"log_level": "INFO", "enable_access_log": True}
    assert "RAY_SERVE_RUN_USER_CODE_IN_SEPARATE_THREAD" not in options["ray_actor_options"]["runtime_env"]["env_vars"]
    # the retrieval stage batches longer than ranking: each batch pays the ranking hop once
    assert cfg.serve.retrieval.batch_wait_timeout_s > cfg.serve.ranking.batch_wait_timeout_s
