"""The online feature store: stable sharding, ordered bounded histories, and durability — every
acknowledged event survives a restart, across snapshots and torn WAL lines, in-process and as
real Ray actors."""

from __future__ import annotations

import asyncio
import os
import subprocess
import sys
import time
import uuid
from collections import deque
from pathlib import Path

import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from rayrec.config import FeatureStoreConfig
from rayrec.serve.feature_store import (
    EMPTY_HISTORY,
    SNAPSHOT_FILE,
    WAL_FILE,
    ActorFeatureStore,
    FeatureStoreShard,
    OnlineEvent,
    UserHistory,
    check_shard_layout,
    group_by_shard,
    merge_event,
    parse_wal,
    shard_folder,
    shard_of,
    wal_line,
)

USERS = [f"user-{i}" for i in range(12)]


def write_bootstrap(path: Path, users: list[str]) -> Path:
    """Each user: two events, oldest first, item ids naming the user so reads can be checked."""
    pq.write_table(pa.table({
        "user_id": users,
        "item_id": [[f"{u}-a", f"{u}-b"] for u in users],
        "stage": pa.array([[0, 3]] * len(users), pa.list_(pa.int8())),
        "ts_ms": pa.array([[100, 200]] * len(users), pa.list_(pa.int64())),
    }), path)
    return path


def events_for(users: list[str], count: int, start_ts: int = 1_000) -> list[OnlineEvent]:
    return [OnlineEvent(users[i % len(users)], f"item-{i}", i % 4, start_ts + i) for i in range(count)]


def shard_path(tmp_path: Path, shard: int = 0, shards: int = 1) -> str:
    return str(tmp_path / shard_folder(shard, shards))


# --- pure pieces -------------------------------------------------------------------------------


def test_shard_of_is_crc32_pinned():
    # Pinned values: a change here would silently move every user to another shard.
    assert {u: shard_of(u, 4) for u in ["u1", "u2", "user-42", "ü-7"]} == {"u1": 2, "u2": 0, "user-42": 3, "ü-7": 0}


def test_sharding_is_the_same_in_another_process():
    code = "from rayrec.serve.feature_store import shard_of; print([shard_of(f'user-{i}', 7) for i in range(50)])"
    env = {**os.environ, "PYTHONHASHSEED": "12345"}
    out = subprocess.run([sys.executable, "-c", code], env=env, capture_output=True, text=True, check=True)
    assert out.stdout.strip() == str([shard_of(f"user-{i}", 7) for i in range(50)])


def test_group_by_shard_keeps_input_order():
    users = ["a", "b", "a", "c", "b"]
    groups = group_by_shard(users, 3)
    assert sorted(p for positions in groups.values() for p in positions) == list(range(5))
    for shard, positions in groups.items():
        assert positions == sorted(positions) and {shard_of(users[p], 3) for p in positions} == {shard}


def test_merge_sorts_out_of_order_events_and_keeps_arrival_order_on_ties():
    history: deque = deque(maxlen=10)
    for entry in [(30, "c", 0), (10, "a", 0), (20, "b", 1), (20, "b2", 2)]:
        assert merge_event(history, entry)
    assert list(history) == [(10, "a", 0), (20, "b", 1), (20, "b2", 2), (30, "c", 0)]


def test_merge_keeps_the_most_recent_when_full():
    history: deque = deque([(10, "a", 0), (20, "b", 0), (30, "c", 0)], maxlen=3)
    assert merge_event(history, (25, "x", 1))
    assert list(history) == [(20, "b", 0), (25, "x", 1), (30, "c", 0)]
    assert not merge_event(history, (5, "old", 0))  # older than everything kept: not a recent event
    assert list(history) == [(20, "b", 0), (25, "x", 1), (30, "c", 0)]


def test_merge_ignores_an_exact_repeat():
    history: deque = deque([(10, "a", 0), (20, "b", 1)], maxlen=5)
    assert not merge_event(history, (20, "b", 1))  # a retried append
    assert merge_event(history, (20, "b", 2))  # same item and time, another stage: a new event
    assert len(history) == 3


def test_parse_wal_skips_a_torn_last_line_and_damaged_lines():
    good = [wal_line(i + 1, e) for i, e in enumerate(events_for(["u"], 3))]
    replay = parse_wal(good[0] + b"{not json\n" + good[1] + good[2][:-7])
    assert [seq for seq, _ in replay.records] == [1, 2]
    assert replay.bad_lines == 1 and replay.torn_tail and replay.damaged
    clean = parse_wal(b"".join(good))
    assert [e for _, e in clean.records] == events_for(["u"], 3) and not clean.damaged


def test_wal_lines_survive_newlines_and_unicode_in_ids():
    event = OnlineEvent("ü\nser", "it\"em", 2, 5)
    assert parse_wal(wal_line(7, event)).records == [(7, event)]


@pytest.mark.parametrize("bad", [dict(user_id=""), dict(item_id=""), dict(stage=4), dict(ts_ms="1")])
def test_online_event_rejects_bad_fields(bad):
    with pytest.raises(ValueError):
        OnlineEvent(**{"user_id": "u", "item_id": "i", "stage": 0, "ts_ms": 1, **bad})


def test_a_folder_with_another_shard_count_is_refused(tmp_path):
    (tmp_path / shard_folder(0, 3)).mkdir()
    check_shard_layout(tmp_path, 3)
    with pytest.raises(ValueError, match="shard count"):
        check_shard_layout(tmp_path, 2)


# --- one shard, in-process (the code the actors run) -----------------------------------------------


def test_shard_bootstraps_only_its_own_users(tmp_path):
    cfg = FeatureStoreConfig(shards=3)
    bootstrap = write_bootstrap(tmp_path / "histories.parquet", USERS)
    shard = FeatureStoreShard(cfg, 1, shard_path(tmp_path, 1, 3), str(bootstrap))
    mine = [u for u in USERS if shard_of(u, 3) == 1]
    assert 0 < len(mine) < len(USERS) and shard.stats().users == len(mine)
    assert shard.histories(mine[:1]) == [UserHistory((f"{mine[0]}-a", f"{mine[0]}-b"), (0, 3), (100, 200))]
    # The bootstrap is read once: a restart recovers from the snapshot even if the file is gone.
    bootstrap.unlink()
    assert FeatureStoreShard(cfg, 1, shard_path(tmp_path, 1, 3), str(bootstrap)).stats().users == len(mine)


def test_shard_appends_are_read_at_once_bounded_and_sorted(tmp_path):
    shard = FeatureStoreShard(FeatureStoreConfig(shards=1, max_history=3, fsync=False), 0, shard_path(tmp_path), None)
    assert shard.append([OnlineEvent("u", "late", 0, 50), OnlineEvent("u", "early", 1, 10)]) == 2
    assert shard.histories(["u", "nobody"]) == [UserHistory(("early", "late"), (1, 0), (10, 50)), EMPTY_HISTORY]
    shard.append([OnlineEvent("u", f"i{t}", 0, t) for t in (60, 20, 70)])
    assert shard.histories(["u"])[0].item_ids == ("late", "i60", "i70")


def test_shard_refuses_users_of_another_shard(tmp_path):
    cfg = FeatureStoreConfig(shards=4, fsync=False)
    shard = FeatureStoreShard(cfg, shard_of("u1", 4), shard_path(tmp_path, shard_of("u1", 4), 4), None)
    with pytest.raises(ValueError, match="belongs to shard"):
        shard.append([OnlineEvent("u1", "i", 0, 1), OnlineEvent("u2", "i", 0, 1)])
    assert shard.stats().last_seq == 0  # nothing of the refused batch was logged


def test_shard_restart_keeps_every_acknowledged_event_across_snapshots(tmp_path):
    cfg = FeatureStoreConfig(shards=1, max_history=100, snapshot_every=4)
    folder = shard_path(tmp_path)
    shard = FeatureStoreShard(cfg, 0, folder, None)
    events = events_for(["a", "b", "c"], 23)
    for start in range(0, len(events), 5):  # batches straddle snapshot boundaries
        shard.append(events[start:start + 5])
    before = shard.histories(["a", "b", "c"])
    assert sum(map(len, before)) == 23
    assert shard.stats().events_since_snapshot == 3  # 23 = 4 snapshots of 5 + 3 in the WAL
    restarted = FeatureStoreShard(cfg, 0, folder, None)
    assert restarted.histories(["a", "b", "c"]) == before
    assert restarted.stats().last_seq == 23


def test_a_crash_between_snapshot_and_wal_truncation_replays_nothing_twice(tmp_path):
    cfg = FeatureStoreConfig(shards=1, snapshot_every=3, fsync=False)
    folder = Path(shard_path(tmp_path))
    shard = FeatureStoreShard(cfg, 0, str(folder), None)
    shard.append([OnlineEvent("u", "x", 0, 1), OnlineEvent("u", "x", 0, 2)])
    wal_before_snapshot = (folder / WAL_FILE).read_bytes()
    shard.append([OnlineEvent("u", "y", 0, 3)])  # snapshot, then WAL truncated...
    (folder / WAL_FILE).write_bytes(wal_before_snapshot)  # ...or not: the crash came in between
    assert FeatureStoreShard(cfg, 0, str(folder), None).histories(["u"])[0].ts_ms == (1, 2, 3)


def test_a_torn_wal_line_is_skipped_and_later_appends_survive(tmp_path, caplog):
    cfg = FeatureStoreConfig(shards=1, fsync=False)
    folder = Path(shard_path(tmp_path))
    FeatureStoreShard(cfg, 0, str(folder), None).append(events_for(["u"], 2))
    with open(folder / WAL_FILE, "ab") as wal:  # a crash mid-write of a third, unacknowledged event
        wal.write(wal_line(3, OnlineEvent("u", "torn", 0, 9))[:-10])
    with caplog.at_level("WARNING"):
        shard = FeatureStoreShard(cfg, 0, str(folder), None)
    assert "torn" in caplog.text
    assert shard.histories(["u"])[0].item_ids == ("item-0", "item-1")
    # The torn bytes were compacted away: a later append is not glued onto them and lost.
    shard.append([OnlineEvent("u", "after", 0, 5_000)])
    assert FeatureStoreShard(cfg, 0, str(folder), None).histories(["u"])[0].item_ids == ("item-0", "item-1", "after")
    assert (folder / SNAPSHOT_FILE).exists()


# --- real Ray actors ---------------------------------------------------------------------------------


def wait_restarted(store: ActorFeatureStore, old_pids: list[int]) -> None:
    """Until every shard answers from a new process (Ray restarts a killed detached actor)."""
    deadline = time.monotonic() + 30
    while True:
        pids = [s.pid for s in store.stats_sync()]
        if all(p != o for p, o in zip(pids, old_pids)):
            return
        assert time.monotonic() < deadline, "shard actors did not restart"
        time.sleep(0.2)


@pytest.mark.integration
def test_actor_store_bootstraps_appends_and_reads(ray_local, tmp_path):
    cfg = FeatureStoreConfig(shards=2, max_history=3, fsync=False, namespace="rayrec-test")
    bootstrap = write_bootstrap(tmp_path / "histories.parquet", USERS)
    name = f"test-{uuid.uuid4().hex[:8]}"
    store = ActorFeatureStore.connect(cfg, tmp_path / "fs", bootstrap, store_name=name)
    try:
        stats = store.stats_sync()
        assert [s.users for s in stats] == [sum(shard_of(u, 2) == i for u in USERS) for i in range(2)]
        # Every replica connecting gets the same actors, whatever bootstrap it passes.
        again = ActorFeatureStore.connect(cfg, tmp_path / "fs", None, store_name=name)
        assert [s.pid for s in again.stats_sync()] == [s.pid for s in stats]
        with pytest.raises(ValueError, match="already runs on"):
            ActorFeatureStore.connect(cfg, tmp_path / "elsewhere", None, store_name=name)

        u0, u1 = USERS[0], USERS[1]
        appended = [OnlineEvent(u0, "new", 2, 300), OnlineEvent(u1, "older", 1, 150),
                    OnlineEvent("stranger", "s", 0, 1)]
        assert asyncio.run(store.append(appended)) == 3
        got = asyncio.run(store.histories([u1, "nobody", u0, "stranger"]))
        assert got[0] == UserHistory((f"{u1}-a", "older", f"{u1}-b"), (0, 1, 3), (100, 150, 200))
        assert got[1] == EMPTY_HISTORY
        assert got[2].item_ids == (f"{u0}-a", f"{u0}-b", "new")
        assert got[3].item_ids == ("s",)
        store.append_sync([OnlineEvent(u0, "newest", 0, 400)])  # max_history=3: the oldest goes
        assert store.histories_sync([u0])[0].item_ids == (f"{u0}-b", "new", "newest")
    finally:
        store.shutdown()


@pytest.mark.integration
def test_every_acknowledged_event_survives_actor_restarts(ray_local, tmp_path):
    import ray

    cfg = FeatureStoreConfig(shards=2, max_history=100, snapshot_every=7, namespace="rayrec-test")
    store = ActorFeatureStore.connect(cfg, tmp_path / "fs", None, store_name=f"test-{uuid.uuid4().hex[:8]}")
    try:
        events = events_for(USERS, 60)
        acknowledged = sum(store.append_sync(events[i:i + 9]) for i in range(0, 60, 9))
        assert acknowledged == 60
        expected = store.histories_sync(USERS)
        assert sum(map(len, expected)) == 60
        old_pids = [s.pid for s in store.stats_sync()]
        for actor in store.actors:
            ray.kill(actor, no_restart=False)
        wait_restarted(store, old_pids)
        assert store.histories_sync(USERS) == expected
        assert sum(s.last_seq for s in store.stats_sync()) == 60
    finally:
        store.shutdown()
