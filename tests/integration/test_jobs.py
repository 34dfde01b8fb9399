"""The cluster path for real: a separate Ray head with token authentication (as cluster.yaml starts
every node), the main job submitted through the Jobs API, and submissions without the token refused.

The head is its own `ray start --head --block` in its own process group, with its own temp dir and
ports: the test session's `ray.init()` Ray, or another one on this machine, is never touched (`ray
stop` would stop them all), and `address="auto"` lookups elsewhere never find this head.
"""

from __future__ import annotations

import json
import os
import secrets
import shlex
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
import uuid
from contextlib import ExitStack
from dataclasses import dataclass
from pathlib import Path

import psutil
import pytest
import requests

from tests.conftest import REPO

pytestmark = pytest.mark.integration

VENV_BIN = Path(sys.executable).parent
JOB_TIMEOUT_S = 600
EXCLUDES = ["/.venv", "/runs", "/data", "/.git", "/benchmarks/results", "__pycache__"]


@dataclass
class Head:
    address: str  # the dashboard, where the Jobs API lives
    token: str
    token_path: Path
    no_token_env: dict[str, str]  # a client environment with no token anywhere

    def client(self, token: str | None = None):
        from ray.job_submission import JobSubmissionClient

        # An explicit header, not RAY_AUTH_MODE/RAY_AUTH_TOKEN_PATH in this process: the session's
        # own ray.init() has already set this process's auth mode and token (~/.ray/auth_token).
        return JobSubmissionClient(self.address, headers={"Authorization": f"Bearer {token or self.token}"})


def _free_ports(n: int) -> list[int]:
    with ExitStack() as stack:
        socks = [stack.enter_context(socket.socket()) for _ in range(n)]
        for s in socks:
            s.bind(("127.0.0.1", 0))
        return [s.getsockname()[1] for s in socks]


def _ours(token_path: Path) -> list[psutil.Process]:
    """Every process of this head: they all inherit its token path, which nothing else has."""
    found = []
    for proc in psutil.process_iter():
        try:
            if proc.environ().get("RAY_AUTH_TOKEN_PATH") == str(token_path):
                found.append(proc)
        except (psutil.NoSuchProcess, psutil.AccessDenied, psutil.ZombieProcess):
            continue
    return found


def _stop(proc: subprocess.Popen, token_path: Path) -> None:
    # SIGTERM first so Ray's processes shut down cleanly; the job driver runs in a session of its own,
    # hence the sweep over every process that carries this head's token path.
    for sig in (signal.SIGTERM, signal.SIGKILL):
        try:
            os.killpg(proc.pid, sig)
        except ProcessLookupError:
            pass
        for p in _ours(token_path):
            try:
                p.send_signal(sig)
            except psutil.NoSuchProcess:
                pass
        _, alive = psutil.wait_procs(_ours(token_path), timeout=20)
        if proc.poll() is None:
            try:
                proc.wait(timeout=10)
            except subprocess.TimeoutExpired:
                pass
        if not alive and proc.poll() is not None:
            return


@pytest.fixture(scope="module")
def head(tmp_path_factory):
    root = tmp_path_factory.mktemp("jobs")
    token = secrets.token_hex(32)  # how Ray generates its tokens
    token_path = root / "auth_token"
    token_path.write_text(token + "\n")
    token_path.chmod(0o600)
    # Short: Ray's Unix sockets live under the temp dir and their paths are limited to ~107 bytes.
    temp_dir = Path(tempfile.mkdtemp(prefix="rr-jobs-", dir="/tmp"))
    gcs, dashboard, client, node_manager, object_manager, agent, agent_grpc, env_agent, metrics = _free_ports(9)

    base = {k: v for k, v in os.environ.items() if not k.startswith("RAY_AUTH") and k != "RAY_ADDRESS"}
    base["RAY_USAGE_STATS_ENABLED"] = "0"
    # The venv first on PATH: job entrypoints (`rayrec ...`) run with the head's environment.
    base["PATH"] = f"{VENV_BIN}{os.pathsep}{base.get('PATH', '')}"
    head_env = {**base, "RAY_AUTH_MODE": "token", "RAY_AUTH_TOKEN_PATH": str(token_path)}
    # No token for the refused clients: no auth env, and a HOME without ~/.ray/auth_token.
    (root / "home").mkdir()
    no_token_env = {**base, "HOME": str(root / "home")}

    log = (root / "head.log").open("w")
    proc = subprocess.Popen(
        [str(VENV_BIN / "ray"), "start", "--head", "--block", "--disable-usage-stats",
         "--node-ip-address=127.0.0.1", f"--port={gcs}", f"--temp-dir={temp_dir}",
         "--dashboard-host=127.0.0.1", f"--dashboard-port={dashboard}", f"--ray-client-server-port={client}",
         f"--node-manager-port={node_manager}", f"--object-manager-port={object_manager}",
         f"--dashboard-agent-listen-port={agent}", f"--dashboard-agent-grpc-port={agent_grpc}",
         f"--runtime-env-agent-port={env_agent}", f"--metrics-export-port={metrics}",
         # 0/0: the OS picks each worker's port, so none collides with another Ray's default range.
         "--min-worker-port=0", "--max-worker-port=0",
         "--num-cpus=2", "--num-gpus=0", f"--object-store-memory={512 * 2**20}"],
        env=head_env, stdout=log, stderr=subprocess.STDOUT, start_new_session=True, cwd=root,
    )  # fmt: skip
    h = Head(f"http://127.0.0.1:{dashboard}", token, token_path, no_token_env)
    try:
        deadline = time.monotonic() + 180
        while True:
            if proc.poll() is not None:
                pytest.fail(f"ray start exited {proc.returncode}:\n{(root / 'head.log').read_text()[-4000:]}")
            try:
                h.client().list_jobs()  # the Jobs API answers only once the dashboard's job module is up
                break
            except Exception as e:  # noqa: BLE001 - not up yet: connection refused, 5xx, agent not ready
                if time.monotonic() > deadline:
                    pytest.fail(f"the head's Jobs API never answered ({e}):\n{(root / 'head.log').read_text()[-4000:]}")
                time.sleep(2)
        yield h
    finally:
        _stop(proc, token_path)
        log.close()
        shutil.rmtree(temp_dir, ignore_errors=True)


def test_head_runs_in_token_mode(head):
    # A public endpoint: what the dashboard itself reports, not what this test configured.
    answer = requests.get(f"{head.address}/api/authentication_mode", timeout=10).json()
    assert answer["authentication_mode"] == "token", answer


def test_job_without_token_is_refused(head, tmp_path):
    marker = tmp_path / "ran"
    submission_id = f"no-token-{uuid.uuid4().hex[:8]}"
    # The real CLI as anyone on the network would run it: no RAY_AUTH_*, no ~/.ray/auth_token.
    cli = subprocess.run(
        [str(VENV_BIN / "ray"), "job", "submit", "--address", head.address, "--submission-id", submission_id,
         "--no-wait", "--", f"touch {marker}"],
        env=head.no_token_env, capture_output=True, text=True, timeout=120,
    )  # fmt: skip
    assert cli.returncode != 0, cli.stdout + cli.stderr
    assert "Authentication required" in cli.stdout + cli.stderr, cli.stdout + cli.stderr

    # The HTTP answer behind it: 401 for no token at all.
    raw = requests.post(f"{head.address}/api/jobs/", json={"entrypoint": f"touch {marker}"}, timeout=10)
    assert raw.status_code == 401, raw.text

    assert submission_id not in {j.submission_id for j in head.client().list_jobs()}
    assert not marker.exists()


def test_job_with_wrong_token_is_refused(head, tmp_path):
    from ray.exceptions import AuthenticationError

    marker = tmp_path / "ran"
    submission_id = f"wrong-token-{uuid.uuid4().hex[:8]}"
    wrong = secrets.token_hex(32)
    with pytest.raises(AuthenticationError, match="Authentication failed"):
        head.client(token=wrong).submit_job(entrypoint=f"touch {marker}", submission_id=submission_id)

    raw = requests.post(f"{head.address}/api/jobs/", json={"entrypoint": f"touch {marker}"},
                        headers={"Authorization": f"Bearer {wrong}"}, timeout=10)  # fmt: skip
    assert raw.status_code == 403, raw.text

    assert submission_id not in {j.submission_id for j in head.client().list_jobs()}
    assert not marker.exists()


def _submit(client, entrypoint: str, runtime_env: dict) -> str:
    """Submit, retrying while the head's job agent is still registering (the API answers first)."""
    from ray.exceptions import AuthenticationError

    deadline = time.monotonic() + 60
    while True:
        try:
            return client.submit_job(entrypoint=entrypoint, runtime_env=runtime_env)
        except AuthenticationError:
            raise
        except RuntimeError as e:
            if "agent" not in str(e).lower() or time.monotonic() > deadline:
                raise
            time.sleep(2)


@pytest.mark.timeout(JOB_TIMEOUT_S + 300)
def test_main_job_runs_through_the_jobs_api(head, tmp_path):
    from ray.job_submission import JobStatus

    out = tmp_path / "out"
    overrides = [
        f"generate.out_dir={out / 'raw'}", f"source.events={out / 'raw' / 'events'}",
        f"source.catalog={out / 'raw' / 'catalog.csv'}", f"preprocess.out_dir={out / 'processed'}",
        f"train.out_dir={out / 'runs'}",
    ]  # fmt: skip
    entrypoint = "rayrec run --config configs/demo.yaml --smoke --no-serve " + " ".join(
        f"--set {shlex.quote(o)}" for o in overrides
    )
    client = head.client()
    # working_dir: the checkout as `ray job submit --working-dir .` ships it (the relative
    # configs/demo.yaml is read from the upload); rayrec itself is the venv's install.
    runtime_env = {"working_dir": str(REPO), "excludes": EXCLUDES}
    job_id = _submit(client, entrypoint, runtime_env)
    deadline = time.monotonic() + JOB_TIMEOUT_S
    status = client.get_job_status(job_id)
    while not status.is_terminal() and time.monotonic() < deadline:
        time.sleep(3)
        status = client.get_job_status(job_id)
    logs = client.get_job_logs(job_id)
    if not status.is_terminal():
        client.stop_job(job_id)
    assert status == JobStatus.SUCCEEDED, f"{status}: {client.get_job_info(job_id).message}\n{logs[-6000:]}"

    report = json.loads((out / "runs" / "report" / "report.json").read_text())
    assert report, "the evaluation report is empty"
    assert (out / "processed" / "manifest.json").exists()
    assert (out / "runs" / "report" / "report.md").exists()
    assert "done" in logs

    # The refused submissions of the other tests left nothing behind: this is the only job.
    assert [j.submission_id for j in client.list_jobs()] == [job_id]
