"""Shared infrastructure on real Valkey and Postgres: migrations, API keys, sessions, queue depth."""

import uuid

import pytest
from sqlalchemy import inspect, select, text

from shared.db.models import ApiKey, Base, Tenant
from shared.db.session import get_engine, session_scope
from shared.keys import create_api_key, revoke_api_key, tenant_for_key
from shared.queue_depth import queue_depths, waiting_counts
from shared.queues import JOB_QUEUES


def head_revision() -> str:
    from alembic.script import ScriptDirectory

    from shared.db.migrate import alembic_config

    return ScriptDirectory.from_config(alembic_config("postgresql://unused")).get_current_head()


def test_migrations_create_every_table_and_the_vector_type(services):
    engine = get_engine(services.database_url)
    tables = set(inspect(engine).get_table_names())
    assert set(Base.metadata.tables) <= tables
    with engine.connect() as conn:
        assert conn.execute(text("SELECT 1 FROM pg_type WHERE typname = 'vector'")).scalar() == 1
        column = conn.execute(
            text(
                "SELECT format_type(atttypid, atttypmod) FROM pg_attribute "
                "WHERE attrelid = 'templates'::regclass AND attname = 'embedding'"
            )
        ).scalar()
        assert column == "vector(128)"
        assert conn.execute(text("SELECT version_num FROM alembic_version")).scalar() == head_revision()


def test_migrations_match_the_models(services):
    from alembic.autogenerate import compare_metadata
    from alembic.migration import MigrationContext

    from shared.gallery_index import not_a_gallery_index

    with get_engine(services.database_url).connect() as conn:
        context = MigrationContext.configure(conn, opts={"include_object": not_a_gallery_index})
        assert compare_metadata(context, Base.metadata) == []


def test_upgrade_twice_is_a_no_op(services):
    from shared.db.migrate import current_revision, upgrade

    upgrade(services.database_url)
    assert current_revision(services.database_url) == head_revision()


def test_key_create_and_look_up(services):
    tenant = f"acme-{uuid.uuid4().hex[:8]}"
    with session_scope() as session:
        key = create_api_key(session, tenant)
        second = create_api_key(session, tenant)
    assert key != second
    with session_scope() as session:
        tenant_id = session.execute(select(Tenant.id).where(Tenant.name == tenant)).scalar_one()
        assert tenant_for_key(session, key) == tenant_id
        assert tenant_for_key(session, second) == tenant_id  # same tenant, not a second one
        assert tenant_for_key(session, key + "x") is None
        assert tenant_for_key(session, "") is None
        stored = session.execute(select(ApiKey.key_hash, ApiKey.prefix).where(ApiKey.tenant_id == tenant_id)).all()
    assert all(key not in row.key_hash and len(row.prefix) < len(key) for row in stored)


def test_revoked_key_is_refused(make_key):
    key = make_key(f"revoke-{uuid.uuid4().hex[:8]}")
    with session_scope() as session:
        assert revoke_api_key(session, key)
    with session_scope() as session:
        assert tenant_for_key(session, key) is None
        assert not revoke_api_key(session, key)


def test_session_scope_rolls_back_on_error(services):
    name = f"rollback-{uuid.uuid4().hex[:8]}"
    with pytest.raises(RuntimeError):
        with session_scope() as session:
            session.add(Tenant(name=name))
            session.flush()
            raise RuntimeError("boom")
    with session_scope() as session:
        assert session.execute(select(Tenant).where(Tenant.name == name)).first() is None


def test_queue_depths_count_waiting_and_unacked(services, redis_client):
    from kombu import Connection

    queues = (f"qa-{uuid.uuid4().hex[:6]}", f"qb-{uuid.uuid4().hex[:6]}")
    qa, qb = queues
    assert queue_depths(redis_client, queues) == {qa: 0, qb: 0}
    with Connection(services.redis_url) as conn:
        simple = conn.SimpleQueue(qa)
        simple.put({"n": 1})
        simple.put({"n": 2})
        simple.put({"n": 3}, priority=5)  # lands in a priority list
        conn.SimpleQueue(qb).put({"n": 4})
        assert queue_depths(redis_client, queues) == {qa: 3, qb: 1}

        message = simple.get(timeout=5)  # reserved, not acked: in kombu's unacked hash
        assert waiting_counts(redis_client, queues)[qa] < 3
        assert queue_depths(redis_client, queues) == {qa: 3, qb: 1}
        message.ack()
        assert queue_depths(redis_client, queues) == {qa: 2, qb: 1}
        simple.close()


def test_queue_depths_default_to_the_job_queues(redis_client):
    depths = queue_depths(redis_client)
    assert set(depths) == set(JOB_QUEUES)
    assert all(isinstance(v, int) and v >= 0 for v in depths.values())


def test_queue_depths_see_celery_messages_reserved_by_a_consumer(services, redis_client):
    """A job message published by Celery and held unacked still counts for its own queue."""
    from kombu import Connection

    from shared.celery_app import get_celery
    from shared.queues import IDENTIFY, RUN_JOBS_TASK

    before = queue_depths(redis_client)
    get_celery().send_task(RUN_JOBS_TASK, kwargs={"job_id": "x"}, queue=IDENTIFY)
    with Connection(services.redis_url) as conn:
        simple = conn.SimpleQueue(IDENTIFY)
        message = simple.get(timeout=5)
        during = queue_depths(redis_client)
        assert during[IDENTIFY] == before[IDENTIFY] + 1
        assert waiting_counts(redis_client)[IDENTIFY] == before[IDENTIFY]
        assert {q: d for q, d in during.items() if q != IDENTIFY} == {q: d for q, d in before.items() if q != IDENTIFY}
        message.ack()
        simple.close()
    assert queue_depths(redis_client) == before
