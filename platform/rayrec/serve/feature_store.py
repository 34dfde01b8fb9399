"""The online feature store: each user's recent events, written by POST /v1/events and read by
retrieval, with no server beyond Ray itself.

This module owns the store's on-disk format and its Ray actors. Users are spread over
``cfg.shards`` named, detached actors by ``zlib.crc32`` of their id (stable across processes and
Python versions, unlike ``hash()``). Each shard keeps, per user, the ``cfg.max_history`` most recent
events sorted by time, with item ids as strings so a release with a new vocabulary reads the same
histories. Durability, per shard folder ``shard-{i}-of-{n}``:

- ``wal.jsonl``: every appended event is written as a JSON line (with a shard-local sequence
  number), flushed and, when ``cfg.fsync``, fsynced *before* the append is acknowledged;
- ``snapshot.parquet``: all histories, rewritten atomically (temporary file + ``os.replace``) every
  ``cfg.snapshot_every`` events, after which the WAL is truncated. The snapshot records the last
  sequence number it holds, so a crash between the two steps replays nothing twice.

A (re)started shard loads the snapshot and replays the WAL; a torn line (a crash mid-write, never
acknowledged) is skipped with a warning and compacted away. A shard that has neither file yet
reads its users from the bootstrap Parquet (user_id, item_id, stage, ts_ms; lists oldest first).
Shard folders must be on storage every node sees when Ray spans several machines: a restarted
actor may come up on another node.
"""

from __future__ import annotations

import asyncio
import functools
import json
import logging
import os
import zlib
from bisect import bisect_right
from collections import deque
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from operator import itemgetter
from pathlib import Path
from typing import TYPE_CHECKING, Any, Protocol

import pyarrow as pa
import pyarrow.parquet as pq

from rayrec.config import FeatureStoreConfig
from rayrec.files import fsync_path
from rayrec.runtime import worker_env

if TYPE_CHECKING:
    from ray.actor import ActorHandle

logger = logging.getLogger(__name__)

EVENT_STAGES = {"view": 0, "click": 1, "add_to_cart": 2, "purchase": 3}
WAL_FILE = "wal.jsonl"
SNAPSHOT_FILE = "snapshot.parquet"
BOOTSTRAP_COLUMNS = ("user_id", "item_id", "stage", "ts_ms")
LAST_SEQ_KEY = b"rayrec.last_seq"
HISTORY_SCHEMA = pa.schema([
    ("user_id", pa.string()),
    ("item_id", pa.list_(pa.string())),
    ("stage", pa.list_(pa.int8())),
    ("ts_ms", pa.list_(pa.int64())),
])

# One held event: (ts_ms, item_id, stage); ts first so a history deque bisects on it.
Entry = tuple[int, str, int]
_TS = itemgetter(0)


@dataclass(frozen=True)
class OnlineEvent:
    """One user action as POST /v1/events delivers it; ``stage`` is a value of EVENT_STAGES."""

    user_id: str
    item_id: str
    stage: int
    ts_ms: int

    def __post_init__(self) -> None:
        if not isinstance(self.user_id, str) or not self.user_id:
            raise ValueError(f"user_id must be a non-empty string, got {self.user_id!r}")
        if not isinstance(self.item_id, str) or not self.item_id:
            raise ValueError(f"item_id must be a non-empty string, got {self.item_id!r}")
        if self.stage not in EVENT_STAGES.values():
            raise ValueError(f"stage must be one of {sorted(EVENT_STAGES.values())}, got {self.stage!r}")
        if not isinstance(self.ts_ms, int):
            raise ValueError(f"ts_ms must be an int, got {self.ts_ms!r}")


@dataclass(frozen=True)
class UserHistory:
    """A user's held events, oldest first; empty tuples for a user the store has never seen."""

    item_ids: tuple[str, ...] = ()
    stages: tuple[int, ...] = ()
    ts_ms: tuple[int, ...] = ()

    def __len__(self) -> int:
        return len(self.item_ids)


EMPTY_HISTORY = UserHistory()


@dataclass(frozen=True)
class ShardStats:
    """What a shard actor holds, for health checks and for telling two stores apart."""

    shard: int
    shards: int
    directory: str
    users: int
    events: int
    last_seq: int
    events_since_snapshot: int
    max_history: int
    pid: int  # the actor's worker process: changes when Ray restarts the shard


class FeatureStore(Protocol):
    """What Serve code depends on; the actor store below is one backend (Redis could be another)."""

    async def histories(self, user_ids: Sequence[str]) -> list[UserHistory]:
        """One history per user id, in the order given."""
        ...

    async def append(self, events: Sequence[OnlineEvent]) -> int:
        """Store the events durably; returns how many were acknowledged."""
        ...


# ---------------------------------------------------------------------------------------------
# Pure pieces: sharding, history merge, WAL lines. No Ray, no files.


def shard_of(user_id: str, shards: int) -> int:
    """The shard that holds ``user_id``: crc32 of its UTF-8 bytes, the same in every process."""
    return zlib.crc32(user_id.encode("utf-8")) % shards


def group_by_shard(user_ids: Iterable[str], shards: int) -> dict[int, list[int]]:
    """Positions of ``user_ids`` per shard, each list in input order."""
    groups: dict[int, list[int]] = {}
    for position, user_id in enumerate(user_ids):
        groups.setdefault(shard_of(user_id, shards), []).append(position)
    return groups


def actor_name(store_name: str, shard: int, shards: int) -> str:
    """The shard actor's Ray name; the store name keeps two apps (or tests) apart."""
    return f"rayrec-feature-store-{store_name}-{shard}-of-{shards}"


def shard_folder(shard: int, shards: int) -> str:
    return f"shard-{shard}-of-{shards}"


def merge_event(history: deque[Entry], entry: Entry) -> bool:
    """Insert ``entry`` where its timestamp belongs (after equal timestamps, so arrival order
    breaks ties); when the deque is full the oldest event makes room. Returns False, changing
    nothing, for an event older than everything a full history keeps, or for an exact repeat of a
    held event: Ray retries an append whose reply was lost, and the retry must not count twice."""
    position = bisect_right(history, entry[0], key=_TS)
    before = position - 1
    while before >= 0 and history[before][0] == entry[0]:
        if history[before] == entry:
            return False
        before -= 1
    if history.maxlen is not None and len(history) >= history.maxlen:
        if position == 0:
            return False
        history.popleft()
        position -= 1
    history.insert(position, entry)
    return True


def history_entries(item_ids: Sequence[str], stages: Sequence[int], ts_ms: Sequence[int]) -> list[Entry]:
    """Parallel lists as entries, sorted by time (stably: ties keep their order)."""
    if not len(item_ids) == len(stages) == len(ts_ms):
        raise ValueError(f"history lists differ in length: {len(item_ids)}, {len(stages)}, {len(ts_ms)}")
    return sorted(zip(map(int, ts_ms), map(str, item_ids), map(int, stages)), key=_TS)


def as_user_history(history: Iterable[Entry]) -> UserHistory:
    entries = tuple(history)
    if not entries:
        return EMPTY_HISTORY
    ts_ms, item_ids, stages = zip(*entries)
    return UserHistory(item_ids=item_ids, stages=stages, ts_ms=ts_ms)


def wal_line(seq: int, event: OnlineEvent) -> bytes:
    """One WAL record; JSON escapes newlines inside strings, so a line is always one record."""
    record = {"seq": seq, "user_id": event.user_id, "item_id": event.item_id,
              "stage": event.stage, "ts_ms": event.ts_ms}
    return json.dumps(record, ensure_ascii=False, separators=(",", ":")).encode("utf-8") + b"\n"


@dataclass(frozen=True)
class WalReplay:
    """A parsed WAL: the (seq, event) records in file order, and what had to be skipped."""

    records: list[tuple[int, OnlineEvent]]
    bad_lines: int
    torn_tail: bool

    @property
    def damaged(self) -> bool:
        return self.bad_lines > 0 or self.torn_tail


def _record_event(line: bytes) -> tuple[int, OnlineEvent]:
    record = json.loads(line)
    seq = record["seq"]
    if not isinstance(seq, int):
        raise ValueError(f"seq is not an int: {seq!r}")
    return seq, OnlineEvent(record["user_id"], record["item_id"], record["stage"], record["ts_ms"])


def parse_wal(data: bytes) -> WalReplay:
    """Records of a WAL file. Bytes after the last newline are a torn write: an append is only
    acknowledged once its whole line, newline included, is on disk, so they are dropped. A damaged
    line in the middle is skipped too: losing it beats refusing to start."""
    *lines, tail = data.split(b"\n")
    records: list[tuple[int, OnlineEvent]] = []
    bad = 0
    for line in lines:
        if not line.strip():
            continue
        try:
            records.append(_record_event(line))
        except (ValueError, KeyError, TypeError):
            bad += 1
    return WalReplay(records=records, bad_lines=bad, torn_tail=bool(tail))


# ---------------------------------------------------------------------------------------------
# Files: snapshot and bootstrap Parquet.


def histories_table(histories: dict[str, deque[Entry]], last_seq: int) -> pa.Table:
    users = [u for u, h in histories.items() if h]
    columns: dict[str, list[Any]] = {"user_id": users, "item_id": [], "stage": [], "ts_ms": []}
    for user_id in users:
        ts_ms, item_ids, stages = zip(*histories[user_id])
        columns["item_id"].append(list(item_ids))
        columns["stage"].append(list(stages))
        columns["ts_ms"].append(list(ts_ms))
    table = pa.table(columns, schema=HISTORY_SCHEMA)
    return table.replace_schema_metadata({LAST_SEQ_KEY: str(last_seq).encode()})


def write_snapshot(path: Path, table: pa.Table, fsync: bool) -> None:
    """Replace ``path`` atomically: readers and restarts see the old snapshot or the new one."""
    tmp = path.with_name(path.name + ".tmp")
    pq.write_table(table, tmp)
    if fsync:
        fsync_path(tmp)
    os.replace(tmp, path)
    if fsync:
        fsync_path(path.parent)


def _table_histories(table: pa.Table) -> Iterable[tuple[str, list[Entry]]]:
    columns = {name: table.column(name).to_pylist() for name in BOOTSTRAP_COLUMNS}
    for user_id, item_ids, stages, ts_ms in zip(*(columns[name] for name in BOOTSTRAP_COLUMNS)):
        if user_id is None:
            continue
        yield user_id, history_entries(item_ids or [], stages or [], ts_ms or [])


def read_snapshot(path: Path) -> tuple[Iterable[tuple[str, list[Entry]]], int]:
    """The snapshot's histories and the last WAL sequence number they include."""
    table = pq.read_table(path)
    last_seq = int((table.schema.metadata or {}).get(LAST_SEQ_KEY, b"0"))
    return _table_histories(table), last_seq


def read_bootstrap(path: Path, shard: int, shards: int) -> Iterable[tuple[str, list[Entry]]]:
    """Histories of this shard's users from a bootstrap Parquet, one batch at a time."""
    source = pq.ParquetFile(path)
    missing = set(BOOTSTRAP_COLUMNS) - set(source.schema_arrow.names)
    if missing:
        raise ValueError(f"bootstrap {path} lacks column(s) {sorted(missing)}; needs {list(BOOTSTRAP_COLUMNS)}")
    for batch in source.iter_batches(columns=list(BOOTSTRAP_COLUMNS)):
        mine = [shard_of(str(u), shards) == shard for u in batch.column("user_id").to_pylist()]
        yield from _table_histories(pa.Table.from_batches([batch.filter(pa.array(mine, pa.bool_()))]))


# ---------------------------------------------------------------------------------------------
# One shard: in-memory histories made durable by the WAL and snapshot. A plain class (tests use it
# without Ray); ``ActorFeatureStore`` runs it as a Ray actor, whose calls run one at a time.


class FeatureStoreShard:
    """The histories of the users that hash to ``shard``, kept in ``directory``."""

    def __init__(self, cfg: FeatureStoreConfig, shard: int, directory: str, bootstrap: str | None) -> None:
        self._cfg = cfg
        self._shard = shard
        self._dir = Path(directory)
        self._dir.mkdir(parents=True, exist_ok=True)
        self._histories: dict[str, deque[Entry]] = {}
        self._last_seq = 0
        self._since_snapshot = 0
        wal_path, snapshot_path = self._dir / WAL_FILE, self._dir / SNAPSHOT_FILE
        if not wal_path.exists() and not snapshot_path.exists():
            if bootstrap is not None:
                self._load(read_bootstrap(Path(bootstrap), shard, cfg.shards))
            # Written even when empty: from now on a restart never reads the bootstrap again.
            self._snapshot()
            damaged = False
        else:
            damaged = self._recover(snapshot_path, wal_path)
        self._wal = open(wal_path, "ab")  # held open: appends then cost one write and one fsync
        if damaged:
            self._compact()

    def _load(self, histories: Iterable[tuple[str, list[Entry]]]) -> None:
        for user_id, entries in histories:
            held = self._histories.get(user_id)
            if held is None:
                self._histories[user_id] = deque(entries, maxlen=self._cfg.max_history)
            else:  # a user on several bootstrap rows
                for entry in entries:
                    merge_event(held, entry)

    def _recover(self, snapshot_path: Path, wal_path: Path) -> bool:
        """Snapshot, then the WAL records after it; True when the WAL had lines to skip."""
        snapshot_seq = 0
        if snapshot_path.exists():
            histories, snapshot_seq = read_snapshot(snapshot_path)
            self._load(histories)
        self._last_seq = snapshot_seq
        if not wal_path.exists():
            return False
        replay = parse_wal(wal_path.read_bytes())
        for seq, event in replay.records:
            if seq > snapshot_seq:  # earlier ones were in the snapshot when the WAL was truncated
                self._apply(event)
                self._last_seq = max(self._last_seq, seq)
                self._since_snapshot += 1
        if replay.damaged:
            logger.warning("feature store %s: skipped %d damaged WAL line(s)%s; replayed %d record(s)",
                           wal_path, replay.bad_lines, " and a torn last line" if replay.torn_tail else "",
                           len(replay.records))
        return replay.damaged

    def _apply(self, event: OnlineEvent) -> None:
        history = self._histories.get(event.user_id)
        if history is None:
            history = self._histories[event.user_id] = deque(maxlen=self._cfg.max_history)
        merge_event(history, (event.ts_ms, event.item_id, event.stage))

    def _snapshot(self) -> None:
        write_snapshot(self._dir / SNAPSHOT_FILE, histories_table(self._histories, self._last_seq),
                       self._cfg.fsync)
        self._since_snapshot = 0

    def _compact(self) -> None:
        """Snapshot everything, then empty the WAL (in that order: see the module docstring)."""
        self._snapshot()
        self._wal.truncate(0)
        if self._cfg.fsync:
            os.fsync(self._wal.fileno())

    def append(self, events: Sequence[OnlineEvent]) -> int:
        """Log, make durable, then apply ``events`` in order; returns how many were acknowledged."""
        for event in events:
            if shard_of(event.user_id, self._cfg.shards) != self._shard:
                raise ValueError(f"user {event.user_id!r} belongs to shard "
                                 f"{shard_of(event.user_id, self._cfg.shards)}, not {self._shard}")
        first = self._last_seq + 1
        self._wal.write(b"".join(wal_line(first + i, event) for i, event in enumerate(events)))
        self._wal.flush()
        if self._cfg.fsync:
            os.fsync(self._wal.fileno())
        for event in events:
            self._apply(event)
        self._last_seq += len(events)
        self._since_snapshot += len(events)
        if self._since_snapshot >= self._cfg.snapshot_every:
            self._compact()
        return len(events)

    def histories(self, user_ids: Sequence[str]) -> list[UserHistory]:
        return [as_user_history(self._histories.get(user_id, ())) for user_id in user_ids]

    def stats(self) -> ShardStats:
        return ShardStats(shard=self._shard, shards=self._cfg.shards, directory=str(self._dir),
                          users=len(self._histories), events=sum(map(len, self._histories.values())),
                          last_seq=self._last_seq, events_since_snapshot=self._since_snapshot,
                          max_history=self._cfg.max_history, pid=os.getpid())


# ---------------------------------------------------------------------------------------------
# The client every Serve replica holds.


@functools.cache
def _shard_actor_class() -> Any:
    import ray

    return ray.remote(FeatureStoreShard)


def check_shard_layout(directory: Path, shards: int) -> None:
    """Refuse a folder written with another shard count: its users would be read from the wrong
    shard and look empty (resharding is not supported; start from a fresh folder and bootstrap)."""
    if not directory.is_dir():
        return
    other = sorted(p.name for p in directory.glob("shard-*-of-*") if not p.name.endswith(f"-of-{shards}"))
    if other:
        raise ValueError(f"feature store {directory} holds {other[0]} (another shard count); the config "
                         f"asks for {shards} shards. Use a fresh folder, or the earlier shard count.")


def _scatter(size: int, groups: dict[int, list[int]], results: Sequence[list[UserHistory]]) -> list[UserHistory]:
    """Per-shard answers back into the caller's order."""
    out: list[UserHistory] = [EMPTY_HISTORY] * size
    for positions, histories in zip(groups.values(), results):
        for position, history in zip(positions, histories):
            out[position] = history
    return out


class ActorFeatureStore:
    """Client for the shard actors: one remote call per shard a request touches, run concurrently.

    Picklable (it holds only actor handles), and cheap to ``connect`` from every replica: all
    connect to the same named, detached actors, which outlive the app until ``shutdown``.
    """

    def __init__(self, actors: Sequence[ActorHandle], store_name: str) -> None:
        self._actors = list(actors)
        self.store_name = store_name

    @classmethod
    def connect(cls, cfg: FeatureStoreConfig, directory: Path, bootstrap: Path | None,
                store_name: str = "default") -> ActorFeatureStore:
        """Get (or start) the store's shard actors and wait until they have loaded their data.
        ``bootstrap`` is read only by shards that have neither a snapshot nor a WAL yet."""
        directory = Path(directory).resolve()  # actors do not share the driver's working folder
        check_shard_layout(directory, cfg.shards)
        actor_class = _shard_actor_class()
        actors = [
            actor_class.options(
                name=actor_name(store_name, shard, cfg.shards), namespace=cfg.namespace,
                get_if_exists=True, lifetime="detached", max_restarts=-1, max_task_retries=-1,
                num_cpus=cfg.num_cpus,
                # One BLAS/OpenMP thread, set before the worker imports anything (no torch here,
                # so set_threads would only add its import to every shard start).
                runtime_env={"env_vars": worker_env(1)},
            ).remote(cfg, shard, str(directory / shard_folder(shard, cfg.shards)),
                     None if bootstrap is None else str(Path(bootstrap).resolve()))
            for shard in range(cfg.shards)
        ]
        store = cls(actors, store_name)
        for stats in store.stats_sync():
            if Path(stats.directory).parent != directory:
                raise ValueError(f"feature store {store_name!r} already runs on {stats.directory}, not "
                                 f"{directory}; shut it down first or pick another store name")
            if stats.max_history != cfg.max_history:
                logger.warning("feature store %r shard %d keeps %d events per user (started with another "
                               "config); this config asks for %d", store_name, stats.shard,
                               stats.max_history, cfg.max_history)
        return store

    @property
    def actors(self) -> list[ActorHandle]:
        return list(self._actors)

    def _history_refs(self, user_ids: Sequence[str]) -> tuple[dict[int, list[int]], list[Any]]:
        groups = group_by_shard(user_ids, len(self._actors))
        refs = [self._actors[shard].histories.remote([user_ids[i] for i in positions])
                for shard, positions in groups.items()]
        return groups, refs

    def _append_refs(self, events: Sequence[OnlineEvent]) -> list[Any]:
        groups = group_by_shard((event.user_id for event in events), len(self._actors))
        return [self._actors[shard].append.remote([events[i] for i in positions])
                for shard, positions in groups.items()]

    async def histories(self, user_ids: Sequence[str]) -> list[UserHistory]:
        groups, refs = self._history_refs(user_ids)
        return _scatter(len(user_ids), groups, await asyncio.gather(*refs))

    async def append(self, events: Sequence[OnlineEvent]) -> int:
        return sum(await asyncio.gather(*self._append_refs(events)))

    def histories_sync(self, user_ids: Sequence[str]) -> list[UserHistory]:
        import ray

        groups, refs = self._history_refs(user_ids)
        return _scatter(len(user_ids), groups, ray.get(refs))

    def append_sync(self, events: Sequence[OnlineEvent]) -> int:
        import ray

        return sum(ray.get(self._append_refs(events)))

    def stats_sync(self) -> list[ShardStats]:
        import ray

        return ray.get([actor.stats.remote() for actor in self._actors])

    def shutdown(self) -> None:
        """Kill the shard actors for good (their folders stay: a later connect recovers them)."""
        import ray

        for actor in self._actors:
            ray.kill(actor, no_restart=True)
