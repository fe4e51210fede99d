"""SQLAlchemy 2 models. Postgres is the source of truth for jobs, subjects, templates and results."""

import uuid
from datetime import datetime

from pgvector.sqlalchemy import Vector
from sqlalchemy import (
    Boolean,
    DateTime,
    Float,
    ForeignKey,
    Index,
    Integer,
    String,
    Text,
    UniqueConstraint,
    func,
    text,
    true,
)
from sqlalchemy.dialects.postgresql import ARRAY, JSONB, UUID
from sqlalchemy.orm import DeclarativeBase, Mapped, mapped_column

EMBEDDING_DIM = 128
JOB_STATUSES = ("queued", "running", "succeeded", "failed")
FINAL_STATUSES = ("succeeded", "failed")


def new_id() -> uuid.UUID:
    return uuid.uuid4()


class Base(DeclarativeBase):
    pass


class Tenant(Base):
    __tablename__ = "tenants"

    id: Mapped[uuid.UUID] = mapped_column(UUID(as_uuid=True), primary_key=True, default=new_id)
    name: Mapped[str] = mapped_column(String(200), unique=True)
    created_at: Mapped[datetime] = mapped_column(DateTime(timezone=True), server_default=func.now())
    # Standard Webhooks signing secrets (whsec_<base64>); the previous one signs too until it expires.
    webhook_secret: Mapped[str | None] = mapped_column(Text)
    previous_webhook_secret: Mapped[str | None] = mapped_column(Text)
    previous_secret_expires_at: Mapped[datetime | None] = mapped_column(DateTime(timezone=True))
    # Images by reference are read only under these (s3://bucket/folder/, file:///folder/); empty: none.
    image_uri_prefixes: Mapped[list[str]] = mapped_column(ARRAY(Text), default=list, server_default="{}")


class ApiKey(Base):
    __tablename__ = "api_keys"

    id: Mapped[uuid.UUID] = mapped_column(UUID(as_uuid=True), primary_key=True, default=new_id)
    tenant_id: Mapped[uuid.UUID] = mapped_column(ForeignKey("tenants.id", ondelete="CASCADE"), index=True)
    prefix: Mapped[str] = mapped_column(String(16))  # shown to people; the key itself is never stored
    key_hash: Mapped[str] = mapped_column(String(64), unique=True)  # sha256 hex of the whole key
    created_at: Mapped[datetime] = mapped_column(DateTime(timezone=True), server_default=func.now())
    revoked_at: Mapped[datetime | None] = mapped_column(DateTime(timezone=True))


class ModelVersion(Base):
    __tablename__ = "model_versions"

    name: Mapped[str] = mapped_column(String(64), primary_key=True)
    architecture: Mapped[str] = mapped_column(String(64))
    weights_sha256: Mapped[str] = mapped_column(String(64))
    preprocessing: Mapped[dict] = mapped_column(JSONB, default=dict)
    threshold: Mapped[float] = mapped_column(Float)
    status: Mapped[str] = mapped_column(String(16), default="active")  # active, candidate, retired
    created_at: Mapped[datetime] = mapped_column(DateTime(timezone=True), server_default=func.now())


class Subject(Base):
    __tablename__ = "subjects"
    __table_args__ = (UniqueConstraint("tenant_id", "external_id"),)

    id: Mapped[uuid.UUID] = mapped_column(UUID(as_uuid=True), primary_key=True, default=new_id)
    tenant_id: Mapped[uuid.UUID] = mapped_column(ForeignKey("tenants.id", ondelete="CASCADE"))
    external_id: Mapped[str] = mapped_column(String(128))  # the subject_id clients use
    created_at: Mapped[datetime] = mapped_column(DateTime(timezone=True), server_default=func.now())


class Template(Base):
    __tablename__ = "templates"
    __table_args__ = (
        # Idempotent enrollment: one template per source image per model version.
        UniqueConstraint("source_job_id", "image_index", "model_version"),
        Index("ix_templates_tenant_model", "tenant_id", "model_version"),
    )

    id: Mapped[uuid.UUID] = mapped_column(UUID(as_uuid=True), primary_key=True, default=new_id)
    tenant_id: Mapped[uuid.UUID] = mapped_column(ForeignKey("tenants.id", ondelete="CASCADE"))
    subject_id: Mapped[uuid.UUID] = mapped_column(ForeignKey("subjects.id", ondelete="CASCADE"), index=True)
    model_version: Mapped[str] = mapped_column(ForeignKey("model_versions.name"))
    embedding: Mapped[list[float]] = mapped_column(Vector(EMBEDDING_DIM))
    source_job_id: Mapped[uuid.UUID] = mapped_column(UUID(as_uuid=True))
    image_index: Mapped[int] = mapped_column(Integer)
    image_key: Mapped[str | None] = mapped_column(Text)  # blob key of the enrollment image, if retained
    created_at: Mapped[datetime] = mapped_column(DateTime(timezone=True), server_default=func.now())


class Job(Base):
    __tablename__ = "jobs"
    __table_args__ = (
        UniqueConstraint("tenant_id", "idempotency_key"),
        Index("ix_jobs_status_submitted", "status", "submitted_at"),
        Index("ix_jobs_submit_batch", "submit_batch_id", postgresql_where=text("submit_batch_id IS NOT NULL")),
        Index("ix_jobs_tenant_submitted", "tenant_id", text("submitted_at DESC"), text("id DESC")),
    )

    id: Mapped[uuid.UUID] = mapped_column(UUID(as_uuid=True), primary_key=True, default=new_id)
    tenant_id: Mapped[uuid.UUID] = mapped_column(ForeignKey("tenants.id", ondelete="CASCADE"), index=True)
    kind: Mapped[str] = mapped_column(String(16))
    status: Mapped[str] = mapped_column(String(16), default="queued")
    subject_external_id: Mapped[str | None] = mapped_column(String(128))
    top_k: Mapped[int | None] = mapped_column(Integer)
    cropped: Mapped[bool] = mapped_column(Boolean, default=False)  # images are already face crops
    blob_keys: Mapped[list] = mapped_column(JSONB, default=list)
    error_code: Mapped[str | None] = mapped_column(String(64))
    error_message: Mapped[str | None] = mapped_column(Text)
    result: Mapped[dict | None] = mapped_column(JSONB)
    attempts: Mapped[int] = mapped_column(Integer, default=0)
    batch_id: Mapped[str | None] = mapped_column(String(64))
    model_version: Mapped[str | None] = mapped_column(String(64))
    idempotency_key: Mapped[str | None] = mapped_column(String(200))
    request_hash: Mapped[str | None] = mapped_column(String(64))  # same key + other body -> 409
    callback_url: Mapped[str | None] = mapped_column(Text)
    options: Mapped[dict | None] = mapped_column(JSONB)  # the request's face options (shared.face_options)
    # False for a job with an idempotency key from its insert until its message is on the queue:
    # a replay waits for it (shared/jobs.py).
    published: Mapped[bool] = mapped_column(Boolean, default=True, server_default=true())
    # The POST /v1/batches request that submitted the job (batch_id is the worker batch that ran it).
    submit_batch_id: Mapped[uuid.UUID | None] = mapped_column(UUID(as_uuid=True))
    submitted_at: Mapped[datetime] = mapped_column(DateTime(timezone=True), server_default=func.now())
    started_at: Mapped[datetime | None] = mapped_column(DateTime(timezone=True))
    finished_at: Mapped[datetime | None] = mapped_column(DateTime(timezone=True))


class SubmitBatch(Base):
    """One POST /v1/batches: its Idempotency-Key and its answer (replayed for the same key and body)."""

    __tablename__ = "submit_batches"
    __table_args__ = (UniqueConstraint("tenant_id", "idempotency_key"),)

    id: Mapped[uuid.UUID] = mapped_column(UUID(as_uuid=True), primary_key=True, default=new_id)
    tenant_id: Mapped[uuid.UUID] = mapped_column(ForeignKey("tenants.id", ondelete="CASCADE"))
    idempotency_key: Mapped[str | None] = mapped_column(String(200))
    request_hash: Mapped[str | None] = mapped_column(String(64))
    answer: Mapped[dict] = mapped_column(JSONB, default=dict, server_default=text("'{}'::jsonb"))
    # False for a batch with an idempotency key until its messages are on the queues.
    published: Mapped[bool] = mapped_column(Boolean, default=True, server_default=true())
    created_at: Mapped[datetime] = mapped_column(DateTime(timezone=True), server_default=func.now())


class AuditRecord(Base):
    """Who erased what, and when: counts and ids only, never biometric data or images."""

    __tablename__ = "audit_log"
    __table_args__ = (Index("ix_audit_log_tenant_created", "tenant_id", "created_at"),)

    id: Mapped[uuid.UUID] = mapped_column(UUID(as_uuid=True), primary_key=True, default=new_id)
    tenant_id: Mapped[uuid.UUID] = mapped_column(UUID(as_uuid=True))  # kept when the tenant is gone
    key_prefix: Mapped[str | None] = mapped_column(String(16))  # the caller's API key prefix
    action: Mapped[str] = mapped_column(String(32))  # subject_erased, retention_run
    subject_id: Mapped[str | None] = mapped_column(String(128))  # the client's subject_id
    details: Mapped[dict] = mapped_column(JSONB, default=dict)  # counts of what was erased
    created_at: Mapped[datetime] = mapped_column(DateTime(timezone=True), server_default=func.now())


class CallbackDelivery(Base):
    """The outbox: one callback per final job with a callback_url, written in the transaction that
    makes the job final, sent by the callback dispatcher (worker.dispatcher). id is the
    webhook-id receivers de-duplicate on; last_error never holds a response body."""

    __tablename__ = "callback_deliveries"
    __table_args__ = (
        Index("ix_callback_deliveries_due", "next_attempt_at", postgresql_where=text("status = 'pending'")),
    )

    id: Mapped[str] = mapped_column(String(64), primary_key=True)
    job_id: Mapped[uuid.UUID] = mapped_column(ForeignKey("jobs.id", ondelete="CASCADE"), unique=True)
    tenant_id: Mapped[uuid.UUID] = mapped_column(UUID(as_uuid=True))
    url: Mapped[str] = mapped_column(Text)
    status: Mapped[str] = mapped_column(String(16), default="pending")  # pending, delivered, failed
    attempts: Mapped[int] = mapped_column(Integer, default=0)
    next_attempt_at: Mapped[datetime] = mapped_column(DateTime(timezone=True), server_default=func.now())
    last_error: Mapped[str | None] = mapped_column(String(200))
    created_at: Mapped[datetime] = mapped_column(DateTime(timezone=True), server_default=func.now())
    delivered_at: Mapped[datetime | None] = mapped_column(DateTime(timezone=True))
