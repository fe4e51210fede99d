"""Nearest-neighbour indexes on templates.embedding: one partial HNSW index per (tenant, model version).

A gallery (the templates of one tenant and one model version) with at least ann_min_templates
templates gets its own index, `CREATE INDEX CONCURRENTLY ... USING hnsw (embedding vector_l2_ops)
WHERE tenant_id = '<tenant>' AND model_version = '<version>'`, so a search walks only that
gallery's graph: no other tenant's or version's entries crowd its candidates out. Smaller galleries
are scanned exactly (worker/nearest.py). The index's name is derived from the pair, so readers
find it by name without a registry table, and only a valid (fully built) one is used.

Why partial indexes: they need pgvector 0.5.0+ (HNSW) and work on the embedded pgserver's 0.6.2
(parallel HNSW builds from 0.6.0). One shared HNSW index filtered by tenant would post-filter: a
small tenant beside a big one gets too few rows back, unless the server has pgvector 0.8.0+
(`hnsw.iterative_scan`). List partitioning by tenant works on any version but makes every tenant
a table. The planner uses a partial index only when it can prove the predicate: the search binds
tenant and version as values and plans with them (plan_cache_mode = force_custom_plan).

Costs (bench/gallery.py): about 1 KB of memory per 128-d template while building (m = 16: a
million templates need maintenance_work_mem of about 1 GB for the graph to fit) and about the
same on disk; build time is in bench/results/gallery.json.

index_name(tenant_id, version) -> str.
ready_indexes(connection, pairs) -> the pairs whose index exists and is valid.
gallery_sizes(connection, versions=None) -> {(tenant_id, version): templates}.
build_index(engine, tenant_id, version, settings) -> seconds (CREATE INDEX CONCURRENTLY).
drop_index(engine, tenant_id, version) -> None.
maintain(engine, settings, versions=None) -> {"built": [...], "dropped": [...]}: build the indexes
  that galleries over the threshold lack (active and candidate versions), drop the others.
maintain_indexes(database_url, settings, versions=None) -> the same, or None when another process
  holds the maintenance lock (one maintainer at a time across the fleet).
"""

import hashlib
import logging
import time
import uuid
from collections.abc import Iterable

from sqlalchemy import Connection, Engine, text

from shared.settings import Settings

log = logging.getLogger(__name__)

PREFIX = "ix_templates_ann_"
Pair = tuple[uuid.UUID, str]  # (tenant_id, model_version)


def not_a_gallery_index(obj: object, name: str | None, type_: str, reflected: bool, compare_to: object) -> bool:
    """Alembic's include_object: the gallery indexes are built at run time, not by migrations."""
    return not (type_ == "index" and name is not None and name.startswith(PREFIX))


def index_name(tenant_id: uuid.UUID, version: str) -> str:
    digest = hashlib.sha256(f"{tenant_id}|{version}".encode()).hexdigest()[:24]
    return PREFIX + digest


def _literal(value: str) -> str:
    """A SQL string literal (standard_conforming_strings on, the default since Postgres 9.1)."""
    if "\x00" in value:
        raise ValueError("NUL in a literal")
    return "'" + value.replace("'", "''") + "'"


def ready_indexes(connection: Connection, pairs: Iterable[Pair]) -> set[Pair]:
    """The pairs among `pairs` whose partial index exists, is valid and ready."""
    by_name = {index_name(tenant, version): (tenant, version) for tenant, version in pairs}
    if not by_name:
        return set()
    rows = connection.execute(
        text(
            "SELECT c.relname FROM pg_class c JOIN pg_index i ON i.indexrelid = c.oid "
            "WHERE c.relname = ANY(:names) AND i.indisvalid AND i.indisready"
        ),
        {"names": list(by_name)},
    ).scalars()
    return {by_name[name] for name in rows}


def existing_indexes(connection: Connection) -> dict[str, bool]:
    """{index name: valid} for every index of this module on templates."""
    rows = connection.execute(
        text(
            "SELECT c.relname, i.indisvalid FROM pg_class c JOIN pg_index i ON i.indexrelid = c.oid "
            "WHERE c.relname LIKE :prefix"
        ),
        {"prefix": PREFIX + "%"},
    ).all()
    return {name: bool(valid) for name, valid in rows}


def gallery_sizes(connection: Connection, versions: Iterable[str] | None = None) -> dict[Pair, int]:
    """Templates per (tenant, version), for `versions` (default: every version not retired)."""
    query = (
        "SELECT t.tenant_id, t.model_version, count(*) FROM templates t "
        "JOIN model_versions v ON v.name = t.model_version "
    )
    if versions is None:
        rows = connection.execute(text(query + "WHERE v.status <> 'retired' GROUP BY 1, 2")).all()
    else:
        rows = connection.execute(
            text(query + "WHERE t.model_version = ANY(:versions) GROUP BY 1, 2"), {"versions": list(versions)}
        ).all()
    return {(tenant, version): int(count) for tenant, version, count in rows}


def build_index(engine: Engine, tenant_id: uuid.UUID, version: str, settings: Settings) -> float:
    """Build the pair's index concurrently (writes go on); an invalid leftover is dropped first.
    Returns the seconds it took; 0.0 when a valid index was already there."""
    name = index_name(tenant_id, version)
    with engine.connect() as connection:
        connection = connection.execution_options(isolation_level="AUTOCOMMIT")
        state = existing_indexes(connection).get(name)
        if state:
            return 0.0
        if state is False:  # an interrupted concurrent build leaves an invalid index
            connection.exec_driver_sql(f"DROP INDEX CONCURRENTLY IF EXISTS {name}")
        connection.exec_driver_sql(f"SET maintenance_work_mem = {_literal(settings.ann_build_memory)}")
        connection.exec_driver_sql(f"SET max_parallel_maintenance_workers = {int(settings.ann_build_workers)}")
        started = time.monotonic()
        connection.exec_driver_sql(
            f"CREATE INDEX CONCURRENTLY IF NOT EXISTS {name} ON templates "
            f"USING hnsw (embedding vector_l2_ops) WITH (m = {int(settings.ann_m)}, "
            f"ef_construction = {int(settings.ann_ef_construction)}) "
            f"WHERE tenant_id = {_literal(str(uuid.UUID(str(tenant_id))))}::uuid "
            f"AND model_version = {_literal(version)}"
        )
        seconds = time.monotonic() - started
    log.info("gallery index built", extra={"index": name, "seconds": round(seconds, 2)})
    return seconds


def drop_index(engine: Engine, tenant_id: uuid.UUID, version: str) -> None:
    _drop(engine, index_name(tenant_id, version))


def _drop(engine: Engine, name: str) -> None:
    with engine.connect() as connection:
        connection = connection.execution_options(isolation_level="AUTOCOMMIT")
        connection.exec_driver_sql(f"DROP INDEX CONCURRENTLY IF EXISTS {name}")
    log.info("gallery index dropped", extra={"index": name})


def maintain(engine: Engine, settings: Settings, versions: Iterable[str] | None = None) -> dict[str, list[str]]:
    """Build the missing indexes of galleries with at least ann_min_templates templates (of
    `versions`, default every version not retired); drop this module's indexes of galleries that
    shrank below half the threshold, of retired versions, or gone (only when versions is None)."""
    with engine.connect() as connection:
        sizes = gallery_sizes(connection, versions)
        existing = existing_indexes(connection)
    built, dropped = [], []
    for (tenant, version), count in sorted(sizes.items(), key=lambda item: -item[1]):
        name = index_name(tenant, version)
        if count >= settings.ann_min_templates and not existing.get(name):
            build_index(engine, tenant, version, settings)
            built.append(name)
    if versions is None:
        keep = {index_name(t, v) for (t, v), n in sizes.items() if 2 * n >= settings.ann_min_templates}
        for name in sorted(set(existing) - keep - set(built)):
            _drop(engine, name)
            dropped.append(name)
    return {"built": built, "dropped": dropped}


MAINTAIN_LOCK_ID = 7_315_017  # pg advisory lock: one maintainer at a time


def maintain_indexes(
    database_url: str, settings: Settings, versions: Iterable[str] | None = None
) -> dict[str, list[str]] | None:
    """maintain() under a session advisory lock; None when another process holds it."""
    from shared.db.session import get_engine

    engine = get_engine(database_url)
    with engine.connect() as holder:
        holder = holder.execution_options(isolation_level="AUTOCOMMIT")
        if not holder.execute(text("SELECT pg_try_advisory_lock(:id)"), {"id": MAINTAIN_LOCK_ID}).scalar():
            return None
        try:
            return maintain(engine, settings, versions)
        finally:
            holder.execute(text("SELECT pg_advisory_unlock(:id)"), {"id": MAINTAIN_LOCK_ID})
