"""The gallery across model versions: the version registry, coverage, activation, reenroll plans.

Exactly one version of a network is active: verifications and identifications use it (and its
threshold); enrollments write the active version and every candidate. Coverage of a version V is
measured against the active version A: of the subjects with templates of A, those that also have
templates of V.

versions_table(session) -> [dict]: every version with its template and subject counts.
register_version(session, name, architecture, weights_sha256, preprocessing, threshold) -> ModelVersion.
coverage(session, name) -> Coverage.
activate_version(session, name, force=False) -> Coverage (raises GalleryError when it refuses).
retire_version(session, name) -> None.
set_threshold(session, name, threshold) -> None.
reenroll_plan(session, target) -> ReenrollPlan.
"""

import uuid
from dataclasses import dataclass, field

from sqlalchemy import distinct, func, select, update

from shared.db.models import FINAL_STATUSES, Job, ModelVersion, Subject, Template

STATUSES = ("active", "candidate", "retired")
MAX_KEYS_PER_JOB = 10  # JobMessage.blob_keys max_length


class GalleryError(Exception):
    """An operation refused; the message says why."""


@dataclass
class Coverage:
    version: str
    source: str | None  # the active version it is measured against (None: nothing active)
    subjects: int  # subjects with templates of source
    covered: int  # of those, subjects with templates of version
    missing: list[tuple[uuid.UUID, str]] = field(default_factory=list)  # (tenant_id, external_id)

    @property
    def complete(self) -> bool:
        return self.covered >= self.subjects

    @property
    def fraction(self) -> float:
        return self.covered / self.subjects if self.subjects else 1.0


def get_version(session, name: str, lock: bool = False) -> ModelVersion:
    query = select(ModelVersion).where(ModelVersion.name == name)
    row = session.scalars(query.with_for_update() if lock else query).first()
    if row is None:
        raise GalleryError(f"no model version {name!r}")
    return row


def active_version(session, architecture: str, exclude: str | None = None) -> ModelVersion | None:
    """The active version of a network (the first by name if, wrongly, there are several)."""
    query = select(ModelVersion).where(ModelVersion.architecture == architecture, ModelVersion.status == "active")
    if exclude is not None:
        query = query.where(ModelVersion.name != exclude)
    return session.scalars(query.order_by(ModelVersion.name)).first()


def versions_table(session) -> list[dict]:
    """One dict per version: name, status, threshold, architecture, preprocessing, weights_sha256,
    templates, subjects, coverage (fraction of the active version's subjects; None for the active)."""
    counts = {
        name: (templates, subjects)
        for name, templates, subjects in session.execute(
            select(Template.model_version, func.count(), func.count(distinct(Template.subject_id))).group_by(
                Template.model_version
            )
        ).all()
    }
    rows = []
    for version in session.scalars(select(ModelVersion).order_by(ModelVersion.created_at, ModelVersion.name)):
        templates, subjects = counts.get(version.name, (0, 0))
        cover = None if version.status in ("active", "retired") else coverage(session, version.name).fraction
        rows.append(
            {
                "name": version.name,
                "status": version.status,
                "threshold": version.threshold,
                "architecture": version.architecture,
                "preprocessing": version.preprocessing,
                "weights_sha256": version.weights_sha256,
                "templates": templates,
                "subjects": subjects,
                "coverage": cover,
            }
        )
    return rows


def register_version(
    session, name: str, architecture: str, weights_sha256: str, preprocessing: dict, threshold: float
) -> ModelVersion:
    """A new candidate version; GalleryError if the name is taken."""
    if session.get(ModelVersion, name) is not None:
        raise GalleryError(f"model version {name!r} already exists")
    row = ModelVersion(
        name=name,
        architecture=architecture,
        weights_sha256=weights_sha256,
        preprocessing=preprocessing,
        threshold=threshold,
        status="candidate",
    )
    session.add(row)
    session.flush()
    return row


def coverage(session, name: str, missing_limit: int = 1000) -> Coverage:
    """Coverage of version `name` against the active version of its network."""
    version = get_version(session, name)
    source = active_version(session, version.architecture, exclude=name)
    if source is None:
        return Coverage(name, None, 0, 0)
    has_source = select(Template.subject_id).where(Template.model_version == source.name).distinct()
    has_target = select(Template.subject_id).where(Template.model_version == name).distinct()
    subjects = session.scalar(select(func.count()).select_from(has_source.subquery()))
    covered = session.scalar(
        select(func.count()).select_from(has_source.where(Template.subject_id.in_(has_target)).subquery())
    )
    missing = session.execute(
        select(Subject.tenant_id, Subject.external_id)
        .where(Subject.id.in_(has_source), Subject.id.not_in(has_target))
        .order_by(Subject.tenant_id, Subject.external_id)
        .limit(missing_limit)
    ).all()
    return Coverage(name, source.name, subjects, covered, [tuple(row) for row in missing])


def activate_version(session, name: str, force: bool = False) -> Coverage:
    """Make `name` the active version of its network in this transaction: the previous active
    version becomes a candidate (enrollments keep writing it, so it can be activated back).
    Refuses a retired version, and coverage below 100% unless force."""
    rows = session.scalars(select(ModelVersion).with_for_update()).all()  # one activation at a time
    target = next((row for row in rows if row.name == name), None)
    if target is None:
        raise GalleryError(f"no model version {name!r}")
    if target.status == "retired":
        raise GalleryError(f"{name} is retired: register a new version instead")
    cover = coverage(session, name)
    if target.status == "active":
        return cover
    if not cover.complete and not force:
        raise GalleryError(
            f"{name} covers {cover.covered} of {cover.subjects} subjects of {cover.source} "
            f"({100 * cover.fraction:.1f}%): run `biofleet reenroll --to-model {name}` first, or pass --force"
        )
    session.execute(
        update(ModelVersion)
        .where(ModelVersion.architecture == target.architecture, ModelVersion.status == "active")
        .values(status="candidate")
    )
    target.status = "active"
    session.flush()
    return cover


def retire_version(session, name: str) -> None:
    """Stop writing a version's templates; its templates stay. The active version cannot retire."""
    version = get_version(session, name, lock=True)
    if version.status == "active":
        raise GalleryError(f"{name} is active: activate another version first")
    version.status = "retired"


def set_threshold(session, name: str, threshold: float) -> None:
    get_version(session, name, lock=True).threshold = float(threshold)


@dataclass
class SubjectImages:
    subject_pk: uuid.UUID
    tenant_id: uuid.UUID
    external_id: str
    keys: list[str]
    cropped: set[str] = field(default_factory=set)  # keys first enrolled as face crops: no detection

    def groups(self) -> list[tuple[bool, list[str]]]:
        """(cropped, keys) groups: a reenroll job processes its images as their enrollment did."""
        found = [(flag, [k for k in self.keys if (k in self.cropped) == flag]) for flag in (False, True)]
        return [(flag, keys) for flag, keys in found if keys]


@dataclass
class ReenrollPlan:
    target: str
    source: str | None
    todo: list[SubjectImages]  # subjects to submit
    pending: list[uuid.UUID]  # reenroll jobs of target still queued or running (an earlier run)
    no_images: list[tuple[uuid.UUID, str]]  # subjects without retained enrollment images
    done: int  # subjects already covered


def reenroll_plan(session, target: str) -> ReenrollPlan:
    """What reenroll must still do to cover `target`: subjects of the active version without
    templates of target and without a pending reenroll job for it, with their retained images."""
    version = get_version(session, target)
    if version.status == "retired":
        raise GalleryError(f"{target} is retired")
    cover = coverage(session, target, missing_limit=10**9)
    pending_jobs = session.execute(
        select(Job.id, Job.tenant_id, Job.subject_external_id).where(
            Job.kind == "reenroll", Job.model_version == target, Job.status.not_in(FINAL_STATUSES)
        )
    ).all()
    pending_subjects = {(row.tenant_id, row.subject_external_id) for row in pending_jobs}
    wanted = [key for key in cover.missing if key not in pending_subjects]
    todo, no_images = [], []
    if wanted and cover.source is not None:
        rows = session.execute(
            select(Subject.id, Subject.tenant_id, Subject.external_id, Template.image_key, Job.cropped)
            .join(Template, Template.subject_id == Subject.id)
            .outerjoin(Job, Job.id == Template.source_job_id)
            .where(Template.model_version == cover.source)
            .order_by(Subject.tenant_id, Subject.external_id, Template.created_at, Template.image_index)
        ).all()
        images: dict[tuple, SubjectImages] = {}
        for subject_pk, tenant_id, external_id, key, cropped in rows:
            entry = images.setdefault((tenant_id, external_id), SubjectImages(subject_pk, tenant_id, external_id, []))
            if key and key not in entry.keys:
                entry.keys.append(key)
                if cropped:
                    entry.cropped.add(key)
        for key in wanted:
            found = images.get(key)
            if found is None or not found.keys:
                no_images.append(key)
            else:
                todo.append(found)
    return ReenrollPlan(target, cover.source, todo, [row.id for row in pending_jobs], no_images, cover.covered)
