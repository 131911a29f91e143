"""Cheaper event-log writes for the launcher's own sqlite instance (`assets/launch.py`).

Dagster's `SqliteEventLogStorage` opens every connection through a new SQLAlchemy engine
(`create_engine` + dialect set-up + statement compilation with an empty cache, then `dispose`), once
per event and once more for each asset event's mirror in the index shard, and every new run shard
re-reads the alembic migration scripts twice (revision check, then stamp). Measured on the eval
bench (`--all`, 4 checkpoints, 319 events in 7 runs, 2 shared cores): 2.2 s of event writes at load
~1.5 and 10.5 s when other work kept the disk busy; with what follows, 0.8 s, and the 8 shard set-ups
0.5 -> 0.2 s (100 log events alone: 0.30-0.38 s -> 0.09 s).

`speed_up(instance)` changes only the storage object of that instance, in this process:
- one engine per shard, kept (an LRU of `KEEP` shards: the index and the current run's), each with
  one pooled connection kept open between writes. Dagster's `NullPool` opens and closes the sqlite
  file per use, and closing the last connection to a WAL database checkpoints it, syncs it and
  deletes the WAL: several fsyncs per event, which on a disk shared with other work cost 20 ms per
  event and more. An idle connection holds no lock (WAL mode): other processes (the UI, a daemon)
  read and write as before. The engines (and their connections) close with the instance
  (`instance.dispose()`), or when a shard leaves the LRU;
- on those connections, a shard in WAL mode (every shard Dagster creates) commits with
  `PRAGMA synchronous=NORMAL` instead of FULL: no fsync per commit, the WAL is synced at its
  checkpoints. sqlite documents this as safe from corruption in WAL mode; what it gives up is the
  durability of the last commits on a power cut or OS crash (not on a crash of this process), which
  for a local instance's event log is a run left unfinished, closed by the next launch
  (assets/run_health.py). On a disk shared with other work a FULL commit cost 4-9 ms, and one event
  is one to four commits;
- `has_table` answers from memory once a table was found (Dagster asks before each dynamic-partition
  query and asset-check event, through a new engine each time: 230 times in a 4-checkpoint launch);
- while a shard is set up (`_initdb`), alembic's `ScriptDirectory.from_config` returns the script
  directory parsed the first time for that config (the migration scripts do not change in a process);
- a new shard (a new run's file, which does not exist yet) is a copy of an empty shard that Dagster's
  own `_initdb` made once in this process, in a temporary folder: the same tables, indexes, WAL mode
  and alembic stamp, without the ~45 ms of schema statements per run (7-8 runs per launch). The copy
  is linked into place only if no file is there (`os.link` fails on an existing name); a shard that
  another process created first is set up by Dagster's `_initdb` as before, which checks its stamp.
Anything else (another storage class, a Dagster whose private names moved) is left as it is: the
launcher then runs on Dagster's own code path, only slower.
"""

from __future__ import annotations

import contextlib
import tempfile
from collections import OrderedDict
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import dagster as dg

from lora_pipeline.fsutil import atomic_write_bytes

KEEP = 4  # engines kept: the index shard, the current run's shard, and a little slack
_NEEDED = ("_connect", "_initdb", "_db_lock", "_initialized_dbs", "conn_string_for_shard", "has_table")


def speed_up(instance: dg.DagsterInstance) -> bool:
    """Keep engines and parsed migration scripts for this instance's sqlite event log (module
    docstring); True when applied, False when the storage is not the stock sqlite one."""
    try:
        from dagster._core.storage.event_log.sqlite.sqlite_event_log import (
            SQLITE_BUSY_TIMEOUT_SECONDS,
            SqliteEventLogStorage,
        )
        from dagster._core.storage.sql import create_engine
        from sqlalchemy import event
        from sqlalchemy.pool import QueuePool
    except ImportError:
        return False
    storage = instance.event_log_storage
    if type(storage) is not SqliteEventLogStorage or not all(hasattr(storage, n) for n in _NEEDED):
        return False
    if getattr(storage, "_lora_pipeline_fast", False):
        return True
    engines: OrderedDict[str, Any] = OrderedDict()
    initdb = storage._initdb

    def _engine(shard: str):
        engine = engines.get(shard)
        if engine is None:
            # One connection kept; a nested use of the same shard gets a short-lived extra one.
            engine = create_engine(storage.conn_string_for_shard(shard), poolclass=QueuePool, pool_size=1,
                                   max_overflow=4, pool_timeout=SQLITE_BUSY_TIMEOUT_SECONDS,
                                   connect_args={"timeout": SQLITE_BUSY_TIMEOUT_SECONDS,
                                                 "check_same_thread": False})
            event.listen(engine, "checkout", _normal_sync_in_wal)
            engines[shard] = engine
            while len(engines) > KEEP:
                engines.popitem(last=False)[1].dispose()
        else:
            engines.move_to_end(shard)
        return engine

    @contextlib.contextmanager
    def _connect(shard: str) -> Iterator[Any]:
        # SqliteEventLogStorage._connect, with the engine kept instead of created and disposed.
        with storage._db_lock:
            engine = _engine(shard)
            if shard not in storage._initialized_dbs:
                if not _shard_from_template(storage, shard, initdb):
                    with _scripts_parsed_once():
                        initdb(engine)
                storage._initialized_dbs.add(shard)
            with engine.connect() as conn, conn.begin():
                yield conn

    has_table = storage.has_table
    tables: set[str] = set()

    def _has_table(name: str) -> bool:
        # Dagster asks before every dynamic-partition query and asset-check event (230 times in a
        # 4-checkpoint launch), each time through a new engine; a table, once there, stays.
        if name not in tables and has_table(name):
            tables.add(name)
        return name in tables

    dispose = storage.dispose

    def _dispose() -> None:
        while engines:
            engines.popitem()[1].dispose()
        dispose()

    storage._connect = _connect
    storage.has_table = _has_table
    storage.dispose = _dispose
    storage._lora_pipeline_fast = True
    return True


def _normal_sync_in_wal(dbapi_connection: Any, record: Any, _proxy: Any) -> None:
    """On checkout, once per kept connection: synchronous=NORMAL when the shard is in WAL mode (a new
    shard becomes WAL in Dagster's set-up, after its first connection was opened)."""
    if record.info.get("lora_pipeline_sync"):
        return
    cursor = dbapi_connection.cursor()
    try:
        mode = cursor.execute("PRAGMA journal_mode").fetchone()
        if mode and str(mode[0]).lower() == "wal":
            cursor.execute("PRAGMA synchronous=NORMAL")
            record.info["lora_pipeline_sync"] = True
    finally:
        cursor.close()


_SCRIPTS: dict[int, Any] = {}


@contextlib.contextmanager
def _scripts_parsed_once() -> Iterator[None]:
    """alembic's ScriptDirectory.from_config memoized per config object while a shard is set up
    (Dagster's alembic configs are themselves cached per storage module: `get_alembic_config`)."""
    try:
        from alembic.script import ScriptDirectory
    except ImportError:
        yield
        return
    original = ScriptDirectory.__dict__.get("from_config")
    if not isinstance(original, classmethod):
        yield
        return

    def from_config(cls, config, *args, **kwargs):
        if args or kwargs:
            return original.__func__(cls, config, *args, **kwargs)
        got = _SCRIPTS.get(id(config))
        if got is None or got[0] is not config:
            got = _SCRIPTS[id(config)] = (config, original.__func__(cls, config))
        return got[1]

    ScriptDirectory.from_config = classmethod(from_config)
    try:
        yield
    finally:
        ScriptDirectory.from_config = original


_TEMPLATE: dict[str, bytes | None] = {}  # "shard" -> an empty shard's bytes (None: not usable)


def _template(initdb: Callable[[Any], None]) -> bytes | None:
    """An empty shard as Dagster's `_initdb` makes it, made once per process in a temporary folder;
    None when it cannot be made whole (then every shard is set up by `_initdb`)."""
    if "shard" not in _TEMPLATE:
        _TEMPLATE["shard"] = None
        try:
            from dagster._core.storage.sql import create_engine
            from sqlalchemy.pool import NullPool

            with tempfile.TemporaryDirectory(prefix="lora-pipeline-shard-") as tmp:
                db = Path(tmp) / "template.db"
                engine = create_engine(f"sqlite:///{db}", poolclass=NullPool)
                try:
                    with _scripts_parsed_once():
                        initdb(engine)
                finally:
                    engine.dispose()  # its last connection closed: sqlite checkpointed and removed the WAL
                if not db.with_name("template.db-wal").exists():
                    _TEMPLATE["shard"] = db.read_bytes()
        except Exception:  # noqa: BLE001 - a speed-up only: Dagster's own set-up still works
            _TEMPLATE["shard"] = None
    return _TEMPLATE["shard"]


def _shard_from_template(storage: Any, shard: str, initdb: Callable[[Any], None]) -> bool:
    """Put a copy of the empty shard in place of a shard file that does not exist yet; False (set it
    up with `_initdb`) when the file exists, appeared meanwhile, or the copy cannot be written."""
    try:
        path = Path(storage.path_for_shard(shard))
        if path.exists():
            return False
        data = _template(initdb)
        if data is None:
            return False
        atomic_write_bytes(path, data, replace=False)  # never over a shard another process has just made
        return True
    except OSError:
        return False
