"""bench/gallery.py's loader on the real Postgres: every template it enrolls is a distinct vector
(exact duplicates leave an HNSW graph with links among themselves only), the counts match, and the
numpy answer its recall is measured against is the database's exact scan."""

import uuid

import numpy as np
from sqlalchemy import text

VERSION = "bench-gallery-test"


def test_loader_enrolls_distinct_vectors_and_the_exact_answer_matches(services):
    from bench.gallery import PER_SUBJECT, Gallery
    from shared.db.session import get_engine, session_scope
    from worker.nearest import exact_search

    from .test_nearest import add_tenant, add_version

    rng = np.random.default_rng(5)
    real = {f"person{i}": rng.normal(0, 0.1, (1 + i % 5, 128)).astype(np.float32) for i in range(12)}
    seeds = np.concatenate(list(real.values()))
    with session_scope(services.database_url) as session:
        add_version(session, VERSION, "candidate")
        tenant = add_tenant(session, f"bench-gallery-{uuid.uuid4().hex[:6]}")
    engine = get_engine(services.database_url)
    gallery = Gallery(tenant, VERSION)
    gallery.grow(engine, 60, real, seeds, rng)
    gallery.grow(engine, 150, real, seeds, rng)

    with engine.begin() as connection:
        rows = connection.execute(
            text(
                "SELECT s.external_id, count(*), count(DISTINCT t.embedding::text) FROM templates t "
                "JOIN subjects s ON s.id = t.subject_id WHERE t.tenant_id = :tenant GROUP BY 1"
            ),
            {"tenant": tenant},
        ).all()
    counts = {name: (total, distinct) for name, total, distinct in rows}
    assert sum(total for total, _ in counts.values()) == gallery.templates >= 150
    assert all(total == distinct for total, distinct in counts.values()), "a vector enrolled twice"
    for name in gallery.names:
        expected = min(len(real[name]), PER_SUBJECT) if name in real else PER_SUBJECT
        assert counts[name][0] == expected
    assert set(real) <= set(gallery.names)

    probes = [real[name][-1] + rng.normal(0, 0.01, 128).astype(np.float32) for name in sorted(real)[:6]]
    truth = gallery.exact_top(np.stack(probes), 5)
    with session_scope(services.database_url) as session:
        found = exact_search(session.connection(), tenant, VERSION, probes, 5)
    assert [[c["subject_id"] for c in candidates] for candidates in found] == truth
