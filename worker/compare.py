"""Compare probe descriptors with enrolled templates of one model version.

model_threshold(session, model_version, default) -> float: the version's match threshold.
subject_templates(session, model_version, subjects) -> {(tenant_id, external_id): (n, 128) array}.
verify(probe, templates) -> (min Euclidean distance, templates compared).
identify(session, tenant_id, probe, model_version, top_k) -> [{"subject_id", "distance"}], nearest
first, one entry per subject (its nearest template), by pgvector's `<->`.
"""

import uuid
from collections.abc import Iterable

import numpy as np
from sqlalchemy import func, select, tuple_
from sqlalchemy.orm import Session

from shared.db.models import EMBEDDING_DIM, ModelVersion, Subject, Template

SubjectKey = tuple[uuid.UUID, str]  # (tenant_id, external_id)


def model_threshold(session: Session, model_version: str, default: float) -> float:
    """The threshold stored with model_version, or default when the row is missing."""
    value = session.execute(
        select(ModelVersion.threshold).where(ModelVersion.name == model_version)
    ).scalar_one_or_none()
    return float(value) if value is not None else default


def subject_templates(
    session: Session, model_version: str, subjects: Iterable[SubjectKey]
) -> dict[SubjectKey, np.ndarray]:
    """Every template of model_version for each subject, in one query; subjects without any are absent."""
    keys = sorted(set(subjects))
    if not keys:
        return {}
    rows = session.execute(
        select(Subject.tenant_id, Subject.external_id, Template.embedding)
        .join(Template, Template.subject_id == Subject.id)
        .where(
            Template.model_version == model_version,
            tuple_(Subject.tenant_id, Subject.external_id).in_(keys),
        )
    ).all()
    grouped: dict[SubjectKey, list[np.ndarray]] = {}
    for tenant_id, external_id, embedding in rows:
        grouped.setdefault((tenant_id, external_id), []).append(np.asarray(embedding, dtype=np.float32))
    return {key: np.stack(vectors) for key, vectors in grouped.items()}


def verify(probe: np.ndarray, templates: np.ndarray) -> tuple[float, int]:
    """Minimum Euclidean distance from probe (128,) to the rows of templates (n, 128), and n."""
    templates = np.asarray(templates, dtype=np.float64).reshape(-1, EMBEDDING_DIM)
    if len(templates) == 0:
        raise ValueError("no templates to compare with")
    distances = np.linalg.norm(templates - np.asarray(probe, dtype=np.float64), axis=1)
    return float(distances.min()), len(templates)


def identify(session: Session, tenant_id: uuid.UUID, probe: np.ndarray, model_version: str, top_k: int) -> list[dict]:
    """The top_k subjects of tenant_id nearest to probe, each at its nearest template's distance."""
    vector = np.asarray(probe, dtype=np.float32)
    distance = func.min(Template.embedding.l2_distance(vector)).label("distance")
    rows = session.execute(
        select(Subject.external_id, distance)
        .join(Subject, Subject.id == Template.subject_id)
        .where(Template.tenant_id == tenant_id, Template.model_version == model_version)
        .group_by(Subject.id, Subject.external_id)
        .order_by(distance, Subject.external_id)
        .limit(top_k)
    ).all()
    return [{"subject_id": external_id, "distance": float(d)} for external_id, d in rows]
