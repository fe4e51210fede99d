"""Read-your-writes inside one batch: the enrollments of a batch are applied, in submission
order, before its comparisons. A verify or identify job sees the templates of every enrollment of
its tenant submitted before it in the same batch, besides those already in the database."""

import uuid
from typing import Any

import numpy as np

from worker.batch.model import WorkItem

SubjectKey = tuple[uuid.UUID, str]


def earlier_templates(item: WorkItem, enrolled: list[WorkItem], version: str) -> dict[str, np.ndarray]:
    """subject -> (n, 128) templates of version written by the enrollments of the item's tenant
    submitted before it (enrolled: succeeded enroll items of the batch, in submission order)."""
    found: dict[str, list[np.ndarray]] = {}
    for enroll in enrolled:
        outcome = enroll.outcome
        if (
            enroll.tenant_id != item.tenant_id
            or enroll.submitted_at > item.submitted_at
            or enroll.model_version != version
            or outcome is None
            or enroll.subject is None
        ):
            continue
        found.setdefault(enroll.subject, []).extend(np.asarray(row[1]) for row in outcome.templates)
    return {subject: np.stack(rows) for subject, rows in found.items() if rows}


def with_earlier(
    gallery: dict[SubjectKey, np.ndarray], item: WorkItem, earlier: dict[str, np.ndarray]
) -> dict[SubjectKey, np.ndarray]:
    """The verify gallery with the templates of the item's subject from earlier enrollments."""
    if item.subject is None or item.subject not in earlier:
        return gallery
    key = (item.tenant_id, item.subject)
    stored = gallery.get(key)
    rows = earlier[item.subject] if stored is None else np.vstack([stored, earlier[item.subject]])
    return {**gallery, key: rows}


def merge_candidates(
    candidates: list[dict[str, Any]], probe: np.ndarray, earlier: dict[str, np.ndarray], top_k: int
) -> list[dict[str, Any]]:
    """The candidates found in the database and the subjects of earlier enrollments, one per
    subject (its nearest template), nearest first, at most top_k."""
    if not earlier:
        return candidates
    best = {c["subject_id"]: float(c["distance"]) for c in candidates}
    for subject, rows in earlier.items():
        distance = float(np.linalg.norm(rows - probe[None, :], axis=1).min())
        best[subject] = min(distance, best.get(subject, distance))
    ranked = sorted(best.items(), key=lambda pair: (pair[1], pair[0]))[:top_k]
    return [{"subject_id": subject, "distance": distance} for subject, distance in ranked]
