"""1:N search for the identify probes of a batch: one query per gallery (tenant, model version).

identify_many(session, probes, settings) -> [[{"subject_id", "distance"}], ...], one list per probe
in order, nearest first, one entry per subject (its nearest template), ties by subject id.

A gallery with a valid partial HNSW index (shared/gallery_index.py) is searched through it: each
probe takes its max(ann_candidates, 3 x top_k) nearest templates from the index (hnsw.ef_search:
at least ann_ef_search and that many; set with the index check in one round trip), their distances
are the exact `<->` values, and they are reduced to one entry per subject. A probe that finds
fewer than top_k subjects that way is scanned exactly. Galleries without an index are scanned
exactly, every probe of the gallery in the same query. Both paths give the same answer whenever
the index finds the true nearest templates (bench/gallery.py measures how often: recall).
"""

import uuid

import numpy as np
from sqlalchemy import Connection, text
from sqlalchemy.orm import Session

from shared.gallery_index import Pair, index_name
from shared.settings import Settings
from worker.batch.model import Probe

Candidates = list[dict]

_PROBES = "(SELECT CAST(u.v AS vector) AS v, u.ord FROM unnest(CAST(:probes AS text[])) WITH ORDINALITY AS u(v, ord)) p"
EXACT_SQL = f"""
SELECT p.ord, c.external_id, c.distance FROM {_PROBES}
CROSS JOIN LATERAL (
    SELECT s.external_id, min(t.embedding <-> p.v) AS distance
    FROM templates t JOIN subjects s ON s.id = t.subject_id
    WHERE t.tenant_id = :tenant AND t.model_version = :version
    GROUP BY s.id, s.external_id
    ORDER BY distance, s.external_id
    LIMIT :k
) c
"""
# tenant and version are bound values; planned with them (force_custom_plan), so the planner can
# prove the partial index's predicate.
INDEX_SQL = f"""
SELECT p.ord, s.external_id, c.distance FROM {_PROBES}
CROSS JOIN LATERAL (
    SELECT t.subject_id, t.embedding <-> p.v AS distance
    FROM templates t
    WHERE t.tenant_id = :tenant AND t.model_version = :version
    ORDER BY t.embedding <-> p.v
    LIMIT :n
) c
JOIN subjects s ON s.id = c.subject_id
"""


def vector_text(descriptor: np.ndarray) -> str:
    """pgvector's text form; 9 significant digits give the float32 values back exactly."""
    values = np.asarray(descriptor, dtype=np.float32).reshape(-1)
    return "[" + ",".join(f"{v:.9g}" for v in values.tolist()) + "]"


def index_settings(connection: Connection, ef_search: int) -> None:
    """For this transaction: custom plans (the partial index predicate is proven with the bound
    values) and the HNSW search breadth."""
    connection.execute(
        text(
            "SELECT set_config('plan_cache_mode', 'force_custom_plan', true), set_config('hnsw.ef_search', :ef, true)"
        ),
        {"ef": str(int(ef_search))},
    )


def prepare(connection: Connection, pairs: list[Pair], ef_search: int) -> set[Pair]:
    """One round trip: index_settings() for this transaction, and the pairs among `pairs` whose
    index is valid and ready (shared.gallery_index.ready_indexes)."""
    by_name = {index_name(tenant, version): (tenant, version) for tenant, version in pairs}
    row = connection.execute(
        text(
            "SELECT set_config('plan_cache_mode', 'force_custom_plan', true), "
            "set_config('hnsw.ef_search', :ef, true), "
            "ARRAY(SELECT c.relname::text FROM pg_class c JOIN pg_index i ON i.indexrelid = c.oid "
            "WHERE c.relname = ANY(:names) AND i.indisvalid AND i.indisready)"
        ),
        {"ef": str(int(ef_search)), "names": list(by_name)},
    ).one()
    return {by_name[name] for name in row[2]}


def exact_search(
    connection: Connection, tenant_id: uuid.UUID, version: str, probes: list[np.ndarray], k: int
) -> list[Candidates]:
    """The k nearest subjects of the gallery for each probe, by a full scan."""
    found: list[Candidates] = [[] for _ in probes]
    rows = connection.execute(
        text(EXACT_SQL),
        {"probes": [vector_text(p) for p in probes], "tenant": tenant_id, "version": version, "k": k},
    ).all()
    for ord_, external_id, distance in rows:
        found[ord_ - 1].append({"subject_id": external_id, "distance": float(distance)})
    for candidates in found:
        candidates.sort(key=lambda c: (c["distance"], c["subject_id"]))
    return found


def index_search(
    connection: Connection, tenant_id: uuid.UUID, version: str, probes: list[np.ndarray], n: int
) -> list[Candidates]:
    """For each probe, the subjects of its n nearest templates by the gallery's HNSW index, each at
    its nearest template's exact distance, nearest first."""
    best: list[dict[str, float]] = [{} for _ in probes]
    rows = connection.execute(
        text(INDEX_SQL),
        {"probes": [vector_text(p) for p in probes], "tenant": tenant_id, "version": version, "n": n},
    ).all()
    for ord_, external_id, distance in rows:
        seen = best[ord_ - 1]
        d = float(distance)
        if external_id not in seen or d < seen[external_id]:
            seen[external_id] = d
    return [
        [{"subject_id": s, "distance": d} for s, d in sorted(seen.items(), key=lambda item: (item[1], item[0]))]
        for seen in best
    ]


def identify_many(session: Session, probes: list[Probe], settings: Settings) -> list[Candidates]:
    """See the module docstring."""
    results: list[Candidates] = [[] for _ in probes]
    groups: dict[tuple[uuid.UUID, str], list[int]] = {}
    for i, probe in enumerate(probes):
        groups.setdefault((probe.tenant_id, probe.model_version), []).append(i)
    if not groups:
        return results
    connection = session.connection()
    taken = {
        pair: max(settings.ann_candidates, 3 * max(probes[i].top_k for i in members))
        for pair, members in groups.items()
    }
    indexed = prepare(connection, list(groups), max(settings.ann_ef_search, *taken.values()))
    for (tenant_id, version), members in groups.items():
        k = max(probes[i].top_k for i in members)
        vectors = [probes[i].descriptor for i in members]
        exact_members = members
        if (tenant_id, version) in indexed:
            found = index_search(connection, tenant_id, version, vectors, taken[(tenant_id, version)])
            exact_members = []
            for i, candidates in zip(members, found):
                if len(candidates) >= probes[i].top_k:
                    results[i] = candidates
                else:
                    exact_members.append(i)
        if exact_members:
            found = exact_search(connection, tenant_id, version, [probes[i].descriptor for i in exact_members], k)
            for i, candidates in zip(exact_members, found):
                results[i] = candidates
    for i, probe in enumerate(probes):
        results[i] = results[i][: probe.top_k]
    return results
