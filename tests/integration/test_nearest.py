"""1:N search through partial HNSW indexes (shared/gallery_index.py, worker/nearest.py) on the real
Postgres + pgvector: the same answers as the exact scan, never another tenant's or version's
template, a small tenant beside a big one still gets its k nearest, and the index after new
enrollments and a version switch. The index threshold is lowered so small galleries use it."""

import uuid

import numpy as np
import pytest
from sqlalchemy import text

BIG_SUBJECTS = 700  # x 3 templates
SMALL_SUBJECTS = 6
V1 = "ann-test-v1"
V2 = "ann-test-v2"


def settings(**overrides):
    from shared.settings import Settings

    return Settings(**{"ann_min_templates": 300, "ann_candidates": 60, "ann_ef_search": 100, **overrides})


def add_version(session, name: str, status: str) -> None:
    from shared.db.models import ModelVersion

    if session.get(ModelVersion, name) is None:
        session.add(
            ModelVersion(
                name=name,
                architecture="ann-test",
                weights_sha256="0" * 64,
                preprocessing={},
                threshold=0.6,
                status=status,
            )
        )


def add_tenant(session, name: str) -> uuid.UUID:
    from shared.db.models import Tenant

    tenant = Tenant(name=name)
    session.add(tenant)
    session.flush()
    return tenant.id


def add_templates(
    session, tenant_id: uuid.UUID, version: str, centres: np.ndarray, rng, prefix: str, per_subject: int = 3
) -> dict[str, np.ndarray]:
    """A subject per centre with per_subject templates around it; {external_id: templates}."""
    from shared.db.models import Subject, Template

    enrolled = {}
    for i, centre in enumerate(centres):
        external_id = f"{prefix}{i:05d}"
        subject = session.query(Subject).filter_by(tenant_id=tenant_id, external_id=external_id).one_or_none()
        if subject is None:
            subject = Subject(tenant_id=tenant_id, external_id=external_id)
            session.add(subject)
            session.flush()
        vectors = (centre + rng.normal(0, 0.02, (per_subject, 128))).astype(np.float32)
        job = uuid.uuid4()
        for j, vector in enumerate(vectors):
            session.add(
                Template(
                    tenant_id=tenant_id,
                    subject_id=subject.id,
                    model_version=version,
                    embedding=vector,
                    source_job_id=job,
                    image_index=j,
                )
            )
        enrolled[external_id] = vectors
    session.flush()
    return enrolled


def exact(gallery: dict[str, np.ndarray], probe: np.ndarray, k: int) -> list[str]:
    best = {s: float(np.linalg.norm(v.astype(np.float64) - probe, axis=1).min()) for s, v in gallery.items()}
    return [s for s, _ in sorted(best.items(), key=lambda item: (item[1], item[0]))[:k]]


@pytest.fixture(scope="module")
def galleries(services):
    """Tenant big: 700 subjects of V1 and of V2 (3 templates each, V2 centres shifted); tenant small:
    6 subjects of V1, centred among big's. Indexes of (big, V1) and (big, V2) and, forced, (small, V1)."""
    from shared.db.session import get_engine, session_scope
    from shared.gallery_index import build_index

    rng = np.random.default_rng(17)
    centres = rng.normal(0, 0.1, (BIG_SUBJECTS, 128))
    with session_scope(services.database_url) as session:
        add_version(session, V1, "active")
        add_version(session, V2, "candidate")
        session.flush()
        big = add_tenant(session, f"ann-big-{uuid.uuid4().hex[:6]}")
        small = add_tenant(session, f"ann-small-{uuid.uuid4().hex[:6]}")
        big_v1 = add_templates(session, big, V1, centres, rng, "b")
        big_v2 = add_templates(session, big, V2, centres + 0.05, rng, "b")
        small_v1 = add_templates(session, small, V1, centres[:SMALL_SUBJECTS] + 0.01, rng, "s")
    engine = get_engine(services.database_url)
    for tenant, version in ((big, V1), (big, V2), (small, V1)):
        build_index(engine, tenant, version, settings())
    with engine.begin() as connection:
        connection.execute(text("ANALYZE templates"))
    yield {
        "big": big,
        "small": small,
        "big_v1": big_v1,
        "big_v2": big_v2,
        "small_v1": small_v1,
        "centres": centres,
        "rng": rng,
    }
    drop_all(engine)  # the schema matches the models again (test_infra)


def drop_all(engine) -> None:
    from shared.gallery_index import _drop, existing_indexes

    with engine.connect() as connection:
        names = list(existing_indexes(connection))
    for name in names:
        _drop(engine, name)


def search(services, probes):
    from shared.db.session import session_scope
    from worker.nearest import identify_many

    with session_scope(services.database_url) as session:
        return identify_many(session, probes, settings())


def explain(services, tenant_id, version: str) -> str:
    """EXPLAIN of the index query as identify_many runs it."""
    from shared.db.session import session_scope
    from worker.nearest import INDEX_SQL, index_settings, vector_text

    with session_scope(services.database_url) as session:
        connection = session.connection()
        index_settings(connection, 100)
        rows = connection.execute(
            text("EXPLAIN " + INDEX_SQL),
            {"probes": [vector_text(np.zeros(128))], "tenant": tenant_id, "version": version, "n": 60},
        ).scalars()
        return "\n".join(rows)


def test_index_path_equals_exact_scan(services, galleries):
    from shared.db.session import session_scope
    from worker.nearest import Probe, exact_search

    rng = np.random.default_rng(3)
    vectors = galleries["centres"][rng.choice(BIG_SUBJECTS, 40, replace=False)] + rng.normal(0, 0.03, (40, 128))
    probes = [Probe(galleries["big"], V1, v, 5) for v in vectors]
    found = search(services, probes)
    with session_scope(services.database_url) as session:
        scanned = exact_search(session.connection(), galleries["big"], V1, list(vectors), 5)
    assert found == scanned  # subjects, order and distances
    assert all(len(c) == 5 for c in found)
    for vector, candidates in zip(vectors, found):
        assert [c["subject_id"] for c in candidates] == exact(galleries["big_v1"], vector, 5)


def test_index_in_use_and_no_other_tenant_or_version(services, galleries):
    plan = explain(services, galleries["big"], V1)
    from shared.gallery_index import index_name

    assert index_name(galleries["big"], V1) in plan, plan
    # probes at the small tenant's subjects: big's V1 and V2 templates lie close by
    vectors = list(galleries["centres"][:SMALL_SUBJECTS] + 0.01)
    from worker.nearest import Probe

    for tenant, version, allowed in (
        (galleries["big"], V1, set(galleries["big_v1"])),
        (galleries["big"], V2, set(galleries["big_v2"])),
        (galleries["small"], V1, set(galleries["small_v1"])),
    ):
        found = search(services, [Probe(tenant, version, v, 5) for v in vectors])
        for vector, candidates in zip(vectors, found):
            names = [c["subject_id"] for c in candidates]
            assert set(names) <= allowed
            gallery = {"b": galleries["big_v2"] if version == V2 else galleries["big_v1"], "s": galleries["small_v1"]}
            assert names == exact(gallery["s" if tenant == galleries["small"] else "b"], vector, 5)


def test_small_tenant_among_big_gets_k_nearest(services, galleries):
    """The small tenant's 6 subjects sit among the big tenant's 700: every one comes back, with
    and without its own index (an index shared across tenants would return few or none)."""
    from shared.db.session import get_engine
    from shared.gallery_index import drop_index
    from worker.nearest import Probe

    probe = galleries["centres"][0]
    expected = exact(galleries["small_v1"], probe, SMALL_SUBJECTS)
    found = search(services, [Probe(galleries["small"], V1, probe, SMALL_SUBJECTS)])[0]
    assert [c["subject_id"] for c in found] == expected
    drop_index(get_engine(services.database_url), galleries["small"], V1)  # below the threshold: exact scan
    found = search(services, [Probe(galleries["small"], V1, probe, SMALL_SUBJECTS)])[0]
    assert [c["subject_id"] for c in found] == expected


def test_index_after_reenrollment_and_version_switch(services, galleries):
    """New templates written after the build are found through the index; after V2 becomes the
    active version (and V1 retires), maintain() keeps V2's index, drops V1's, and V2 answers."""
    from shared.db.session import get_engine, session_scope
    from shared.gallery import activate_version, retire_version
    from shared.gallery_index import existing_indexes, index_name, maintain
    from worker.nearest import Probe

    rng = galleries["rng"]
    newcomer = rng.normal(0, 0.1, (1, 128)) + 0.3  # far from everyone else
    with session_scope(services.database_url) as session:
        added = add_templates(session, galleries["big"], V2, newcomer, rng, "new")
    found = search(services, [Probe(galleries["big"], V2, newcomer[0], 3)])[0]
    assert found[0]["subject_id"] == "new00000"
    assert found[0]["distance"] == pytest.approx(
        float(np.linalg.norm(added["new00000"] - newcomer[0], axis=1).min()), abs=1e-5
    )

    engine = get_engine(services.database_url)
    with session_scope(services.database_url) as session:
        activate_version(session, V2, force=True)
        retire_version(session, V1)
    report = maintain(engine, settings())
    with engine.connect() as connection:
        indexes = existing_indexes(connection)
    assert indexes.get(index_name(galleries["big"], V2)) is True
    assert index_name(galleries["big"], V1) not in indexes
    assert index_name(galleries["big"], V1) in report["dropped"]
    assert index_name(galleries["big"], V2) in explain(services, galleries["big"], V2)
    vectors = list(galleries["centres"][:20] + 0.05)
    found = search(services, [Probe(galleries["big"], V2, v, 5) for v in vectors])
    for vector, candidates in zip(vectors, found):
        assert [c["subject_id"] for c in candidates] == exact(galleries["big_v2"] | added, vector, 5)


PEOPLE = ["Ariel_Sharon", "Colin_Powell", "Hugo_Chavez", "Tony_Blair"]


@pytest.mark.stack
@pytest.mark.faces
def test_identify_jobs_through_the_index_match_the_exact_scan(services, api_client, make_key, start_worker, faces_dir):
    """Identify jobs through the API and a real worker, with the tenant's gallery indexed: the
    right person first, and the same candidates once the index is dropped (exact scan)."""
    from shared.db.models import Template
    from shared.db.session import get_engine, session_scope
    from shared.gallery_index import build_index, drop_index
    from shared.keys import get_or_create_tenant
    from shared.settings import get_settings
    from tests.integration.test_job_path import enroll, face, identify, wait_final

    start_worker(ann_interval_s=0)
    name = f"ann-stack-{uuid.uuid4().hex[:6]}"
    key = make_key(name)
    jobs = [enroll(api_client, key, p, [face(faces_dir, p, n) for n in (1, 2, 3)]) for p in PEOPLE]
    assert all(j["status"] == "succeeded" for j in wait_final(api_client, key, jobs).values())
    version = get_settings().model_version
    rng = np.random.default_rng(5)
    with session_scope(services.database_url) as session:
        tenant = get_or_create_tenant(session, name)
        real = np.array(
            [t.embedding for t in session.query(Template).filter_by(tenant_id=tenant, model_version=version)]
        )
        directions = rng.normal(size=(300, 128))
        centres = real[rng.integers(0, len(real), 300)] + 0.8 * directions / np.linalg.norm(directions, axis=1)[:, None]
        add_templates(session, tenant, version, centres, rng, "synthetic")
    engine = get_engine(services.database_url)
    build_index(engine, tenant, version, settings())
    with engine.begin() as connection:
        connection.execute(text("ANALYZE templates"))
    assert index_name_in_plan(services, tenant, version)

    def run() -> list[list[dict]]:
        ids = [identify(api_client, key, face(faces_dir, p, 5), top_k=5) for p in PEOPLE]
        done = wait_final(api_client, key, ids)
        assert all(done[i]["status"] == "succeeded" for i in ids)
        return [done[i]["result"]["candidates"] for i in ids]

    indexed = run()
    assert [c[0]["subject_id"] for c in indexed] == PEOPLE
    drop_index(engine, tenant, version)
    scanned = run()
    for a, b in zip(indexed, scanned):
        assert [c["subject_id"] for c in a] == [c["subject_id"] for c in b]
        assert [c["distance"] for c in a] == pytest.approx([c["distance"] for c in b], abs=1e-4)


def index_name_in_plan(services, tenant_id, version: str) -> bool:
    from shared.gallery_index import index_name

    return index_name(tenant_id, version) in explain(services, tenant_id, version)
