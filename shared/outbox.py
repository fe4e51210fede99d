"""The callback outbox (shared.db.models.CallbackDelivery): rows written in the transaction that
makes a job final, sent by worker.dispatcher. The caller owns the transaction.

add(session, job_ids) -> rows added: one pending delivery per job that has a callback_url and
    none yet (unique on job id: a job made final twice still has one row, with one delivery id).
claim(session, limit, lease_s, skip_tenants=()) -> due pending rows, oldest first; each is hidden
    from other dispatchers for lease_s (a dispatcher that dies mid-post leaves it due again).
delivered(session, delivery_id), retry_later(session, delivery_id, error, max_attempts, delay_s),
    give_up(session, delivery_id, error), put_back(session, delivery_id, delay_s).
"""

import uuid
from collections.abc import Iterable
from datetime import timedelta

from sqlalchemy import String, and_, case, cast, func, literal, select, update
from sqlalchemy.dialects.postgresql import insert

from shared.db.models import CallbackDelivery, Job

# "msg_" + 32 hex digits, made by Postgres for each row inserted.
DELIVERY_ID = literal("msg_") + func.replace(cast(func.gen_random_uuid(), String), "-", "")


def add(session, job_ids: Iterable[uuid.UUID]) -> int:
    ids = list(job_ids)
    if not ids:
        return 0
    rows = select(DELIVERY_ID, Job.id, Job.tenant_id, Job.callback_url).where(
        Job.id.in_(ids), Job.callback_url.is_not(None), Job.callback_url != ""
    )
    result = session.execute(
        insert(CallbackDelivery)
        .from_select(["id", "job_id", "tenant_id", "url"], rows)
        .on_conflict_do_nothing(index_elements=["job_id"])
    )
    return result.rowcount or 0


def claim(session, limit: int, lease_s: float, skip_tenants: Iterable[uuid.UUID] = ()) -> list[CallbackDelivery]:
    due = [CallbackDelivery.status == "pending", CallbackDelivery.next_attempt_at <= func.now()]
    skip = list(skip_tenants)
    if skip:
        due.append(CallbackDelivery.tenant_id.not_in(skip))
    ids = (
        select(CallbackDelivery.id)
        .where(and_(*due))
        .order_by(CallbackDelivery.next_attempt_at)
        .limit(limit)
        .with_for_update(skip_locked=True)
    )
    return list(
        session.scalars(
            update(CallbackDelivery)
            .where(CallbackDelivery.id.in_(ids.scalar_subquery()))
            .values(next_attempt_at=func.now() + timedelta(seconds=lease_s))
            .returning(CallbackDelivery),
            execution_options={"synchronize_session": False},
        )
    )


def delivered(session, delivery_id: str) -> None:
    session.execute(
        update(CallbackDelivery)
        .where(CallbackDelivery.id == delivery_id)
        .values(status="delivered", attempts=CallbackDelivery.attempts + 1, delivered_at=func.now(), last_error=None)
    )


def retry_later(session, delivery_id: str, error: str, max_attempts: int, delay_s: float) -> str:
    """Count the failed attempt: the row stays pending, due again after delay_s, or fails once it
    reached max_attempts. Returns the row's status."""
    attempts = CallbackDelivery.attempts + 1
    return session.execute(
        update(CallbackDelivery)
        .where(CallbackDelivery.id == delivery_id)
        .values(
            attempts=attempts,
            last_error=error[:200],
            status=case((attempts >= max_attempts, "failed"), else_="pending"),
            next_attempt_at=func.now() + timedelta(seconds=delay_s),
        )
        .returning(CallbackDelivery.status)
    ).scalar_one()


def give_up(session, delivery_id: str, error: str) -> None:
    """Fail the row now (the URL is refused, or the job is gone): no retry can help."""
    session.execute(
        update(CallbackDelivery)
        .where(CallbackDelivery.id == delivery_id)
        .values(status="failed", attempts=CallbackDelivery.attempts + 1, last_error=error[:200])
    )


def put_back(session, delivery_id: str, delay_s: float) -> None:
    """Due again after delay_s, no attempt counted (its tenant had every delivery slot taken)."""
    session.execute(
        update(CallbackDelivery)
        .where(CallbackDelivery.id == delivery_id, CallbackDelivery.status == "pending")
        .values(next_attempt_at=func.now() + timedelta(seconds=delay_s))
    )
