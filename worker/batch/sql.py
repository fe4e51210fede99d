"""The batch's unit of work on Postgres (SQLAlchemy): SqlBatchUnitOfWork(database_url, settings)."""

import uuid
from collections.abc import Callable
from typing import Any, TypeVar

import numpy as np
from sqlalchemy import func, null, select, tuple_, update
from sqlalchemy.dialects.postgresql import insert
from sqlalchemy.orm import Session

from shared import outbox
from shared.db.models import FINAL_STATUSES, Job, ModelVersion, Subject, Template
from shared.db.session import session_scope
from shared.settings import Settings
from worker import compare
from worker.batch.model import JobRow, Probe, TemplateRow, WorkItem
from worker.batch.uow import JobKey, JobsRepository, SubjectKey
from worker.nearest import identify_many
from worker.versions import PRESETS, VersionRow, threshold

T = TypeVar("T")


class SqlJobsRepository:
    def __init__(self, session: Session, settings: Settings):
        self.session = session
        self.settings = settings

    def mark_running(self, jobs: list[JobKey], batch_id: str, model_version: str) -> list[JobRow]:
        rows = self.session.execute(
            update(Job)
            .where(tuple_(Job.id, Job.tenant_id).in_(jobs), Job.status.not_in(FINAL_STATUSES))
            .values(
                status="running",
                started_at=func.now(),
                attempts=Job.attempts + 1,
                batch_id=batch_id,
                model_version=func.coalesce(Job.model_version, model_version),  # reenroll: its target
            )
            .returning(
                Job.id,
                Job.tenant_id,
                Job.kind,
                Job.subject_external_id,
                Job.top_k,
                Job.cropped,
                Job.blob_keys,
                Job.callback_url,
                Job.attempts,
            )
        ).all()
        return [
            JobRow(
                job_id=row.id,
                tenant_id=row.tenant_id,
                kind=row.kind,
                subject=row.subject_external_id,
                top_k=row.top_k,
                cropped=bool(row.cropped),
                blob_keys=list(row.blob_keys or []),
                callback_url=row.callback_url,
                attempts=row.attempts,
            )
            for row in rows
        ]

    def final_among(self, jobs: list[JobKey]) -> set[uuid.UUID]:
        if not jobs:
            return set()
        query = select(Job.id).where(tuple_(Job.id, Job.tenant_id).in_(jobs), Job.status.in_(FINAL_STATUSES))
        return set(self.session.execute(query).scalars())

    def model_versions(self, architecture: str) -> list[VersionRow]:
        rows = self.session.execute(
            select(ModelVersion).where(ModelVersion.architecture == architecture).order_by(ModelVersion.name)
        ).scalars()
        return [
            VersionRow(
                r.name, r.status, float(r.threshold), dict(r.preprocessing or PRESETS.get(r.name, {})), r.weights_sha256
            )
            for r in rows
        ]

    def threshold(self, model_version: str, default: float) -> float:
        return threshold(self.session, model_version, default)

    def templates_for(self, model_version: str, subjects: list[SubjectKey]) -> dict[SubjectKey, np.ndarray]:
        return compare.subject_templates(self.session, model_version, subjects)

    def nearest(self, probes: list[Probe]) -> list[list[dict[str, Any]]]:
        return identify_many(self.session, probes, self.settings)

    def write_outcome(self, item: WorkItem, batch_id: str, model_version: str) -> bool:
        outcome = item.outcome
        assert outcome is not None
        row = self.session.execute(
            update(Job)
            .where(Job.id == item.job_id, Job.status.not_in(FINAL_STATUSES))
            .values(
                status=outcome.status,
                result=outcome.result if outcome.result is not None else null(),
                error_code=outcome.error_code,
                error_message=outcome.error_message,
                finished_at=func.now(),
                batch_id=batch_id,
                model_version=model_version,
            )
            .returning(Job.id)
        ).first()
        if row is None:
            return False
        if outcome.templates:
            self._write_templates(item, model_version, outcome.templates)
        for version, rows in outcome.extra_templates.items():
            if rows:
                self._write_templates(item, version, rows)
        return True

    def add_callbacks(self, job_ids: list[uuid.UUID]) -> None:
        outbox.add(self.session, job_ids)

    def _write_templates(self, item: WorkItem, model_version: str, templates: list[TemplateRow]) -> None:
        """Create the subject if missing, then these templates, ON CONFLICT DO NOTHING."""
        self.session.execute(
            insert(Subject)
            .values(id=uuid.uuid4(), tenant_id=item.tenant_id, external_id=item.subject)
            .on_conflict_do_nothing(index_elements=["tenant_id", "external_id"])
        )
        subject_id = self.session.execute(
            select(Subject.id).where(Subject.tenant_id == item.tenant_id, Subject.external_id == item.subject)
        ).scalar_one()
        rows = [
            {
                "id": uuid.uuid4(),
                "tenant_id": item.tenant_id,
                "subject_id": subject_id,
                "model_version": model_version,
                "embedding": np.asarray(descriptor, dtype=np.float32),
                "source_job_id": item.job_id,
                "image_index": index,
                "image_key": key,
            }
            for index, descriptor, key in templates
        ]
        self.session.execute(
            insert(Template)
            .values(rows)
            .on_conflict_do_nothing(index_elements=["source_job_id", "image_index", "model_version"])
        )


class SqlBatchUnitOfWork:
    """One session per run(fn), committed when fn returns (shared.db.session.session_scope)."""

    def __init__(self, database_url: str, settings: Settings):
        self.database_url = database_url
        self.settings = settings

    def run(self, fn: Callable[[JobsRepository], T]) -> T:
        with session_scope(self.database_url) as session:
            return fn(SqlJobsRepository(session, self.settings))
