"""Pure decisions: a job's outcome from its faces and the templates it is compared with.

No database and no network here: the caller reads templates, thresholds and nearest subjects
through the unit of work and passes them in.
"""

import uuid
from typing import Any

import numpy as np

from worker.batch.face_json import all_faces, face_json, refused_json
from worker.batch.model import (
    ENROLL_KINDS,
    INTERNAL_ERROR,
    SUBJECT_NOT_FOUND,
    VERSION_UNAVAILABLE,
    Outcome,
    TemplateRow,
    WorkItem,
    failed,
)
from worker.compare import verify
from worker.face.errors import LOW_CONFIDENCE, LOW_QUALITY, NO_FACE, SMALL_FACE
from worker.face.types import FaceResult

SubjectKey = tuple[uuid.UUID, str]
NO_FACE_CODES = (NO_FACE, SMALL_FACE, LOW_CONFIDENCE, LOW_QUALITY)  # a detect job succeeds with no face


def plan_versions(items: list[WorkItem], plan: Any, default: str) -> dict[str, dict[str, Any]]:
    """Give each undecided item its versions: verify and identify the active one, enroll the active
    one and the candidates, reenroll the version its message names. plan: a worker.versions.Plan,
    or None (every job uses default). Returns version -> preprocessing."""
    if plan is None:
        for item in items:
            item.versions = (default,)
        return {default: {}}
    for item in items:
        if item.outcome is not None:
            continue
        if item.kind == "enroll":
            item.versions = plan.enroll
        elif item.kind == "reenroll":
            target = item.message.model_version if item.message is not None else None
            row = plan.servable.get(target) if target else None
            if target is None or row is None or row.status == "retired":
                item.versions = (target or default,)
                item.outcome = failed(VERSION_UNAVAILABLE, f"model version {target!r} is not one this worker can write")
                continue
            item.versions = (target,)
        else:
            item.versions = (plan.active,)
    return {name: dict(row.preprocessing) for name, row in plan.servable.items()}


def verify_keys(items: list[WorkItem], version: str) -> list[SubjectKey]:
    """(tenant, subject) of the undecided verifications of this version whose probe has a face."""
    return [
        (i.tenant_id, i.subject)
        for i in items
        if i.outcome is None
        and i.kind == "verify"
        and i.faces
        and i.faces[0].ok
        and i.model_version == version
        and i.subject is not None
    ]


def decide_item(
    item: WorkItem,
    threshold: float,
    gallery: dict[SubjectKey, np.ndarray],
    candidates: list[list[dict[str, Any]]] | None,
) -> Outcome:
    """The outcome of one job whose faces are known (an identify job's candidates found for it,
    per face of its image, largest first)."""
    version = item.model_version or ""
    if item.kind in ENROLL_KINDS:
        return enroll_outcome(item, version)
    probe = item.faces[0] if item.faces else None
    if item.kind == "detect" and probe is not None:
        return detect_outcome(probe, version)
    if probe is None or probe.descriptor is None:
        code = probe.error_code if probe is not None else None
        message = probe.error_message if probe is not None else None
        return failed(code or INTERNAL_ERROR, message or "no descriptor")
    if item.kind == "verify":
        templates = gallery.get((item.tenant_id, item.subject or ""))
        if templates is None:
            return failed(SUBJECT_NOT_FOUND, f"subject {item.subject!r} has no templates of {version}")
        outcome = verify_outcome(probe.descriptor, templates, threshold, version)
        assert outcome.result is not None
        outcome.result.update(face=face_json(probe, version), refused=refused_json(probe))
        return outcome
    if item.kind == "identify":
        per_face = candidates or [[]]
        faces = [{**(face_json(f, version) or {}), "candidates": c} for f, c in zip(all_faces(probe), per_face)]
        result = {
            "candidates": per_face[0],
            "threshold": threshold,
            "model_version": version,
            "face": face_json(probe, version),
            "faces": faces,
            "refused": refused_json(probe),
        }
        return Outcome(status="succeeded", result=result)
    return failed(INTERNAL_ERROR, f"unknown job kind {item.kind!r}")


def detect_outcome(probe: FaceResult, version: str) -> Outcome:
    """Every face kept with its box, landmarks and quality (no descriptor is stored); an image
    without a face, or whose faces were all refused, succeeds with none. Other errors fail."""
    if probe.error_code is not None and probe.error_code not in NO_FACE_CODES:
        return failed(probe.error_code, probe.error_message or "the image could not be processed")
    faces = [face_json(f, version) for f in all_faces(probe)]
    detected = probe.faces_detected
    result = {"faces": faces, "faces_detected": detected, "refused": refused_json(probe), "model_version": version}
    return Outcome(status="succeeded", result=result)


def verify_outcome(probe: np.ndarray, templates: np.ndarray, threshold: float, version: str) -> Outcome:
    distance, count = verify(probe, templates)
    result = {
        "distance": distance,
        "threshold": threshold,
        "match": distance <= threshold,
        "model_version": version,
        "templates_compared": count,
    }
    return Outcome(status="succeeded", result=result)


def enroll_outcome(item: WorkItem, model_version: str) -> Outcome:
    """Succeeded with a template per enrolled image (and per other version the item embeds for),
    or failed with the first image's error."""
    images: list[dict[str, Any]] = []
    templates: list[TemplateRow] = []
    for index, face in enumerate(item.faces):
        if face.descriptor is not None:
            templates.append((index, face.descriptor, item.blob_keys[index]))
            face_used = face_json(face, model_version)
            images.append({"index": index, "status": "enrolled", "error": None, "face": face_used})
        else:
            error = {"code": face.error_code or INTERNAL_ERROR, "message": face.error_message or "no descriptor"}
            images.append({"index": index, "status": "failed", "error": error, "face": None})
        images[-1]["refused"] = refused_json(face)
    if not templates:
        first = images[0]["error"]
        return failed(first["code"], first["message"])
    result: dict[str, Any] = {
        "subject_id": item.subject,
        "templates_created": len(templates),
        "model_version": model_version,
        "images": images,
    }
    extra: dict[str, list[TemplateRow]] = {}
    for version in item.versions[1:]:  # candidates written beside the active version
        extra[version] = [
            (index, item.faces[index].descriptors[version], key)
            for index, _, key in templates
            if version in item.faces[index].descriptors
        ]
    if extra:
        result["also_written"] = {version: len(rows) for version, rows in extra.items()}
    return Outcome(status="succeeded", result=result, templates=templates, extra_templates=extra)
