"""A Ray Train worker killed mid-epoch: read from the artefacts of the session's ``trained`` fixture,
whose retrieval run has its rank-0 worker SIGKILLed in epoch 1 (see tests/conftest.py and
``train.loop._maybe_inject_fault``); nothing is retrained here. Listed so this folder names every
fault the platform is tested against."""

from __future__ import annotations

import os
from collections import Counter

import pytest

from tests.reliability.figures import record

pytestmark = pytest.mark.integration


def test_a_killed_training_worker_costs_at_most_one_epoch(trained, tmp_path):
    root, cfg, _, retrieval, _ = trained
    marker = root / "killed"
    assert marker.exists(), "the fault hook never ran: no worker was killed"
    killed_pid = int(marker.read_text())
    started = [int(line) for line in (root / "epochs.log").read_text().split()]
    finished = [int(m["epoch"]) for m in retrieval.metrics]
    redone = {epoch: n - 1 for epoch, n in Counter(started).items() if n > 1}
    record("training_worker_killed", tmp_path, {
        "fault": "SIGKILL of the rank-0 Ray Train worker in epoch 1, after 2 batches",
        "killed_pid": killed_pid, "epochs_started": started, "epochs_finished": finished,
        "epochs_redone": sum(redone.values()), "max_failures": cfg.train.max_failures,
    })  # fmt: skip
    assert killed_pid != os.getpid()  # the worker process, not this one
    assert finished == list(range(cfg.train.epochs))  # the run completed every epoch, once each
    assert sum(redone.values()) == 1 and set(redone) == {1}, started  # only the killed epoch ran twice
    assert started == sorted(started)  # resumed from the checkpoint, never from the start
