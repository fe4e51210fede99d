"""Compare probe descriptors with enrolled templates of one model version.

subject_templates(session, model_version, subjects) -> {(tenant_id, external_id): (n, 128) array}.
verify(probe, templates) -> (min Euclidean distance, templates compared).
(1:N search: worker/nearest.py.)
"""

import uuid
from collections.abc import Iterable

import numpy as np
from sqlalchemy import select, tuple_
from sqlalchemy.orm import Session

from shared.db.models import EMBEDDING_DIM, Subject, Template

SubjectKey = tuple[uuid.UUID, str]  # (tenant_id, external_id)


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
