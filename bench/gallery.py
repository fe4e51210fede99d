"""1:N identification at gallery scale: search latency, recall and the stack, from 1k to 1M templates.

    .venv/bin/python -m bench.gallery                          # 1k, 10k, 100k (about 10 min)
    .venv/bin/python -m bench.gallery --sizes 1000,10000,100000,1000000 --keep /tmp/gallery-1m
    .venv/bin/python -m bench.gallery --stack-only --keep /tmp/gallery-1m   # the stack figures alone

The gallery of tenant A grows through --sizes (rows are only added): the LFW identities of
../shared/data/faces (lfw_colour: 3 images enrolled, 7 probes each; lfw_view1: every image but
the last enrolled, at most 3, the last a probe), one template per distinct image (no vector is
enrolled twice: an HNSW graph links exact duplicates mostly to each other), at most half of the
gallery, then synthetic subjects (3 templates each) drawn around enrolled real descriptors (never a
probe's; seeded): a centre at a distractor distance from a real descriptor, templates around it. Tenant B holds a tenth as many templates, in the
same table. Templates are bulk-loaded with binary COPY. At each size a gallery with at least
ann_min_templates templates gets its partial HNSW index (build time and size recorded).

Figures per size: the search step (worker.nearest.identify_many, in-process, one probe alone and
batches of 32: p50/p95), the exact scan for comparison (fewer probes at large sizes), top-5
recall of the index against the exact answer (computed with numpy over the loaded vectors), how
often the right subject is first for probes whose identity is enrolled, and, at --stack-sizes,
batches of 32 identify jobs through the API and a worker (first submit to last finish).
JSON to bench/results/gallery.json (rewritten after every size), PNG bench/results/gallery.png.
"""

import argparse
import statistics
import struct
import time
import uuid
from pathlib import Path

import numpy as np

from bench.stats import RESULTS_DIR, percentile, write_results

RESULTS = RESULTS_DIR / "gallery.json"
PLOT = RESULTS_DIR / "gallery.png"
SEED = 17
DIM = 128
PER_SUBJECT = 3
CENTRE_DISTANCE = (0.75, 0.08)  # synthetic centre from its real descriptor: mean, sd
SPREAD = 0.35  # typical distance of a synthetic template from its centre
TOP_K = 5
BATCH = 32


def say(message: str) -> None:
    print(f"[{time.strftime('%H:%M:%S')}] {message}", flush=True)


# --- real descriptors ----------------------------------------------------------------------------


def real_descriptors(faces_dir: Path, cache: Path) -> dict:
    """{"names": [...], "images": [...], "vectors": (n, 128)} of every LFW image with a face; cached."""
    if cache.exists():
        data = np.load(cache, allow_pickle=False)
        return {"names": list(data["names"]), "images": list(data["images"]), "vectors": data["vectors"]}
    from worker.face.detect import CnnDetector
    from worker.face.embed import Embedder
    from worker.face.landmarks import Landmarker
    from worker.face.pipeline import FacePipeline

    paths = sorted((faces_dir / "lfw_colour").glob("*/*.jpg")) + sorted((faces_dir / "lfw_view1").glob("*/*.jpg"))
    embedder = Embedder.load(device="cpu")
    pipeline = FacePipeline(embedder, CnnDetector(device="cpu"), Landmarker(), max_pixels=25_000_000)
    names, images, vectors = [], [], []
    with pipeline:
        for start in range(0, len(paths), 32):
            chunk = paths[start : start + 32]
            for path, face in zip(chunk, pipeline.process([p.read_bytes() for p in chunk])):
                if face.ok:
                    names.append(f"{path.parent.parent.name}/{path.parent.name}")
                    images.append(str(path))
                    vectors.append(face.descriptor)
            say(f"descriptors: {start + len(chunk)} of {len(paths)} images")
    cache.parent.mkdir(parents=True, exist_ok=True)
    np.savez(cache, names=np.array(names), images=np.array(images), vectors=np.stack(vectors).astype(np.float32))
    return {"names": names, "images": images, "vectors": np.stack(vectors).astype(np.float32)}


def split_real(real: dict) -> tuple[dict[str, np.ndarray], list[tuple[str, np.ndarray, str]]]:
    """({subject: templates}, [(subject, probe vector, image path)]) from the real descriptors."""
    by_name: dict[str, list[int]] = {}
    for i, name in enumerate(real["names"]):
        by_name.setdefault(name, []).append(i)
    enrolled, probes = {}, []
    for name, rows in by_name.items():
        subject = name.split("/", 1)[1]
        if name.startswith("lfw_colour/"):
            keep, held = rows[:PER_SUBJECT], rows[PER_SUBJECT:]
        else:
            keep, held = (rows[:-1], rows[-1:]) if len(rows) > 1 else (rows, [])
        if subject in enrolled:  # a name in both folders: keep the colour one
            continue
        enrolled[subject] = real["vectors"][keep]
        probes += [(subject, real["vectors"][i], real["images"][i]) for i in held]
    return enrolled, probes


def distractor_seeds(enrolled: dict[str, np.ndarray]) -> np.ndarray:
    """The real descriptors distractors are drawn around: enrolled images only. Drawn around a
    probe's own image, a shell of distractors surrounds the probe with nothing enrolled inside."""
    return np.concatenate([enrolled[name] for name in sorted(enrolled)]).astype(np.float32)


def synthetic(rng: np.random.Generator, seeds: np.ndarray, subjects: int) -> np.ndarray:
    """(subjects, 3, 128) templates around centres drawn at a distractor distance from seeds."""
    base = seeds[rng.integers(0, len(seeds), subjects)]
    direction = rng.normal(size=(subjects, DIM))
    direction /= np.linalg.norm(direction, axis=1, keepdims=True)
    radius = rng.normal(*CENTRE_DISTANCE, size=(subjects, 1)).clip(0.5, None)
    centres = base + direction * radius
    noise = rng.normal(0, SPREAD / np.sqrt(DIM), size=(subjects, PER_SUBJECT, DIM))
    return (centres[:, None, :] + noise).astype(np.float32)


def distance_figures(real: dict, faces_dir: Path, subjects: int = 20_000) -> dict:
    """Quantiles (1, 5, 25, 50, 75, 95%) of the distances that decide how hard the distractors are:
    LFW View 1 same- and different-person pairs, each real descriptor to its nearest other
    identity, a synthetic template to its nearest real descriptor, and within a synthetic subject."""
    vectors = real["vectors"].astype(np.float64)
    index = {Path(p).name: i for i, p in enumerate(real["images"])}
    pairs: dict[str, list[float]] = {"same": [], "different": []}
    for line in (faces_dir / "lfw_view1" / "pairsDevTest.txt").read_text().splitlines()[1:]:
        f = line.split("\t")
        if len(f) == 3:
            a, b, kind = f"{f[0]}_{int(f[1]):04d}.jpg", f"{f[0]}_{int(f[2]):04d}.jpg", "same"
        elif len(f) == 4:
            a, b, kind = f"{f[0]}_{int(f[1]):04d}.jpg", f"{f[2]}_{int(f[3]):04d}.jpg", "different"
        else:
            continue
        if a in index and b in index:
            pairs[kind].append(float(np.linalg.norm(vectors[index[a]] - vectors[index[b]])))
    people = np.array([n.split("/", 1)[1] for n in real["names"]])
    d = np.sqrt(np.maximum(((vectors[:, None, :] - vectors[None, :, :]) ** 2).sum(-1), 0))
    nearest_other = np.where(people[:, None] == people[None, :], np.inf, d).min(axis=1)
    seeds = distractor_seeds(split_real(real)[0])
    drawn = synthetic(np.random.default_rng(SEED), seeds, subjects).astype(np.float64)
    flat = drawn.reshape(-1, DIM)[: 3 * 2000]
    to_real = np.sqrt(
        np.maximum(
            (flat**2).sum(1)[:, None] - 2 * flat @ vectors.T + (vectors**2).sum(1)[None, :],
            0,
        ).min(axis=1)
    )
    within = np.concatenate([np.linalg.norm(drawn[:, a] - drawn[:, b], axis=1) for a, b in ((0, 1), (0, 2), (1, 2))])

    def q(values) -> dict[str, float]:
        return {f"p{p}": round(float(np.percentile(values, p)), 3) for p in (1, 5, 25, 50, 75, 95)}

    return {
        "lfw_view1_same_person": {"pairs": len(pairs["same"]), **q(pairs["same"])},
        "lfw_view1_different_person": {"pairs": len(pairs["different"]), **q(pairs["different"])},
        "real_to_nearest_other_identity": q(nearest_other),
        "synthetic_template_to_nearest_real": q(to_real),
        "synthetic_within_subject": q(within),
    }


# --- loading -------------------------------------------------------------------------------------

HEADER = b"PGCOPY\n\xff\r\n\x00" + (0).to_bytes(4, "big") + (0).to_bytes(4, "big")
TRAILER = (-1).to_bytes(2, "big", signed=True)


def _uuids(rng: np.random.Generator, count: int) -> np.ndarray:
    return np.frombuffer(rng.bytes(16 * count), dtype="V16")


def copy_gallery(
    engine,
    tenant_id: uuid.UUID,
    version: str,
    names: list[str],
    vectors: np.ndarray,
    counts: np.ndarray,
    rng: np.random.Generator,
) -> None:
    """Subjects `names` with their templates, by binary COPY (fixed-width rows): vectors (rows, 128),
    counts[i] rows of subject i, in order."""
    count = len(names)
    width = max(len(n.encode()) for n in names)
    subject_ids = _uuids(rng, count)
    subjects = np.zeros(
        count,
        dtype=np.dtype(
            [
                ("fields", ">i2"),
                ("l_id", ">i4"),
                ("id", "V16"),
                ("l_tenant", ">i4"),
                ("tenant", "V16"),
                ("l_name", ">i4"),
                ("name", f"S{width}"),
            ]
        ),
    )
    subjects["fields"], subjects["l_id"], subjects["l_tenant"] = 3, 16, 16
    subjects["id"], subjects["tenant"] = subject_ids, np.void(tenant_id.bytes)
    subjects["l_name"] = [len(n.encode()) for n in names]
    subjects["name"] = [n.encode() for n in names]
    rows = int(counts.sum())
    mv = version.encode()
    templates = np.zeros(
        rows,
        dtype=np.dtype(
            [
                ("fields", ">i2"),
                ("l_id", ">i4"),
                ("id", "V16"),
                ("l_tenant", ">i4"),
                ("tenant", "V16"),
                ("l_subject", ">i4"),
                ("subject", "V16"),
                ("l_mv", ">i4"),
                ("mv", f"S{len(mv)}"),
                ("l_emb", ">i4"),
                ("dim", ">i2"),
                ("unused", ">i2"),
                ("emb", ">f4", (DIM,)),
                ("l_src", ">i4"),
                ("src", "V16"),
                ("l_index", ">i4"),
                ("index", ">i4"),
            ]
        ),
    )
    templates["fields"] = 7
    for field in ("l_id", "l_tenant", "l_subject", "l_src"):
        templates[field] = 16
    templates["id"], templates["tenant"] = _uuids(rng, rows), np.void(tenant_id.bytes)
    templates["subject"] = np.repeat(subject_ids, counts)
    templates["src"] = np.repeat(_uuids(rng, count), counts)
    templates["l_mv"], templates["mv"] = len(mv), mv
    templates["l_emb"], templates["dim"] = 4 + 4 * DIM, DIM
    templates["emb"] = vectors.reshape(rows, DIM)
    templates["l_index"], templates["index"] = 4, np.arange(rows) - np.repeat(np.cumsum(counts) - counts, counts)
    if len({len(n.encode()) for n in names}) == 1:
        subject_bytes = subjects.tobytes()
    else:  # names of varying width: one row at a time
        subject_bytes = b"".join(
            struct.pack(">hi16si16si", 3, 16, sid.tobytes(), 16, tenant_id.bytes, len(name.encode())) + name.encode()
            for sid, name in zip(subject_ids, names)
        )
    raw = engine.raw_connection()
    try:
        cursor = raw.driver_connection.cursor()
        with cursor.copy("COPY subjects (id, tenant_id, external_id) FROM STDIN WITH (FORMAT binary)") as copy:
            copy.write(HEADER + subject_bytes + TRAILER)
        columns = "id, tenant_id, subject_id, model_version, embedding, source_job_id, image_index"
        with cursor.copy(f"COPY templates ({columns}) FROM STDIN WITH (FORMAT binary)") as copy:
            step = 200_000
            copy.write(HEADER)
            for start in range(0, rows, step):
                copy.write(templates[start : start + step].tobytes())
            copy.write(TRAILER)
        raw.driver_connection.commit()
    finally:
        raw.close()


class Gallery:
    """One tenant's gallery as loaded, kept in memory for the exact answer."""

    def __init__(self, tenant_id: uuid.UUID, version: str):
        self.tenant_id, self.version = tenant_id, version
        self.names: list[str] = []
        self.blocks: list[np.ndarray] = []  # (rows, 128) per load
        self.counts: list[np.ndarray] = []  # templates per subject, per load
        self.real_added = 0
        self.synthetic_added = 0

    @property
    def templates(self) -> int:
        return sum(len(block) for block in self.blocks)

    def add(self, engine, names: list[str], vectors: np.ndarray, counts: np.ndarray, rng) -> None:
        if names:
            copy_gallery(engine, self.tenant_id, self.version, names, vectors, counts, rng)
            self.names += names
            self.blocks.append(vectors.reshape(-1, DIM))
            self.counts.append(counts)

    def grow(self, engine, size: int, real: dict[str, np.ndarray], seeds: np.ndarray, rng) -> None:
        """Add real subjects (up to half of size) then synthetic ones, to about size templates."""
        real_names = sorted(real, key=lambda n: (len(real[n]) != PER_SUBJECT, n))  # lfw_colour's first
        want_real = min(len(real_names), max(0, size // 2 // PER_SUBJECT))
        new_real = real_names[self.real_added : want_real]
        if new_real:
            chosen = [real[n][:PER_SUBJECT].astype(np.float32) for n in new_real]
            counts = np.array([len(c) for c in chosen])
            self.add(engine, new_real, np.concatenate(chosen), counts, rng)
            self.real_added = want_real
        missing = -(-max(0, size - self.templates) // PER_SUBJECT)
        if missing:
            names = [f"syn{self.synthetic_added + i:08d}" for i in range(missing)]
            counts = np.full(missing, PER_SUBJECT)
            self.add(engine, names, synthetic(rng, seeds, missing).reshape(-1, DIM), counts, rng)
            self.synthetic_added += missing

    def exact_top(self, probes: np.ndarray, k: int) -> list[list[str]]:
        """The exact top-k subjects per probe (min over a subject's templates), with numpy."""
        vectors = np.concatenate(self.blocks)
        counts = np.concatenate(self.counts)
        starts = np.cumsum(counts) - counts
        norms = (vectors**2).sum(axis=1)
        found = []
        for probe in probes:
            d2 = norms - 2 * (vectors @ probe.astype(np.float32)) + float(probe @ probe)
            per_subject = np.minimum.reduceat(d2, starts)
            top = np.argpartition(per_subject, k + 10)[: k + 10]  # then exactly, in float64
            exact = [
                (
                    float(
                        np.linalg.norm(
                            vectors[starts[s] : starts[s] + counts[s]].astype(np.float64) - probe, axis=1
                        ).min()
                    ),
                    self.names[s],
                )
                for s in top
            ]
            found.append([name for _, name in sorted(exact)[:k]])
        return found


# --- measuring -----------------------------------------------------------------------------------


def timed_search(database_url: str, settings, probes: list) -> tuple[list, float]:
    from shared.db.session import session_scope
    from worker.nearest import identify_many

    started = time.perf_counter()
    with session_scope(database_url) as session:
        found = identify_many(session, probes, settings)
    return found, time.perf_counter() - started


def search_figures(database_url: str, settings, gallery: Gallery, vectors: np.ndarray, exact_probes: int) -> dict:
    from worker.nearest import Probe

    probes = [Probe(gallery.tenant_id, gallery.version, v, TOP_K) for v in vectors]
    timed_search(database_url, settings, probes[:BATCH])  # warm the cache
    alone, answers = [], []
    for probe in probes:
        found, seconds = timed_search(database_url, settings, [probe])
        alone.append(seconds * 1000)
        answers.append(found[0])
    batches = []
    for start in range(0, len(probes) - BATCH + 1, BATCH):
        batches.append(timed_search(database_url, settings, probes[start : start + BATCH])[1] * 1000)
    exact_ms = []
    with_index = _indexed(database_url, gallery)
    for probe in probes[:exact_probes]:
        if with_index:  # the exact path, as a gallery without an index runs it
            exact_ms.append(_exact_ms(database_url, probe))
        else:
            exact_ms.append(alone[len(exact_ms)])
    return {
        "path": "index" if with_index else "exact",
        "alone_p50_ms": percentile(alone, 50),
        "alone_p95_ms": percentile(alone, 95),
        "batch32_p50_ms": percentile(batches, 50) if batches else None,
        "batch32_p95_ms": percentile(batches, 95) if batches else None,
        "batch32_probes_per_s": BATCH / (percentile(batches, 50) / 1000) if batches else None,
        "exact_scan_p50_ms": percentile(exact_ms, 50) if exact_ms else None,
        "exact_scan_probes": len(exact_ms),
        "answers": answers,
    }


def _indexed(database_url: str, gallery: Gallery) -> bool:
    from shared.db.session import get_engine
    from shared.gallery_index import ready_indexes

    with get_engine(database_url).connect() as connection:
        return bool(ready_indexes(connection, [(gallery.tenant_id, gallery.version)]))


def _exact_ms(database_url: str, probe) -> float:
    from shared.db.session import session_scope
    from worker.nearest import exact_search

    started = time.perf_counter()
    with session_scope(database_url) as session:
        exact_search(session.connection(), probe.tenant_id, probe.model_version, [probe.descriptor], probe.top_k)
    return (time.perf_counter() - started) * 1000


def ef_sweep(
    database_url: str, settings, gallery: Gallery, vectors: np.ndarray, truth: list[list[str]], values: list[int]
) -> list[dict]:
    """Search latency and top-5 recall at each hnsw.ef_search in values (candidates unchanged)."""
    from worker.nearest import Probe

    rows = []
    for ef in values:
        tuned = settings.model_copy(update={"ann_ef_search": ef})
        probes = [Probe(gallery.tenant_id, gallery.version, v, TOP_K) for v in vectors]
        timed_search(database_url, tuned, probes[:BATCH])
        alone, answers = [], []
        for probe in probes:
            found, seconds = timed_search(database_url, tuned, [probe])
            alone.append(seconds * 1000)
            answers.append(found[0])
        batch = [timed_search(database_url, tuned, probes[i : i + BATCH])[1] * 1000 for i in range(0, 3 * BATCH, BATCH)]
        recall = np.mean([len({c["subject_id"] for c in got} & set(want)) / TOP_K for got, want in zip(answers, truth)])
        rows.append(
            {
                "ef_search": ef,
                "alone_p50_ms": percentile(alone, 50),
                "alone_p95_ms": percentile(alone, 95),
                "batch32_p50_ms": percentile(batch, 50),
                "recall_top5": float(recall),
            }
        )
        say(
            f"ef_search {ef}: p50 {rows[-1]['alone_p50_ms']:.1f} p95 {rows[-1]['alone_p95_ms']:.1f} ms, "
            f"batch32 {rows[-1]['batch32_p50_ms']:.0f} ms, recall {recall:.4f}"
        )
    return rows


def build_indexes(database_url: str, settings, galleries: list[Gallery]) -> dict:
    from sqlalchemy import text

    from shared.db.session import get_engine
    from shared.gallery_index import build_index, index_name

    engine = get_engine(database_url)
    built = {}
    for gallery in galleries:
        if gallery.templates < settings.ann_min_templates:
            continue
        name = index_name(gallery.tenant_id, gallery.version)
        seconds = build_index(engine, gallery.tenant_id, gallery.version, settings)
        with engine.begin() as connection:
            size = connection.execute(text("SELECT pg_relation_size(:n)"), {"n": name}).scalar()
        built[str(gallery.tenant_id)] = {"templates": gallery.templates, "build_s": seconds, "size_mb": size / 2**20}
        say(f"index of {gallery.templates:,} templates: {seconds:.1f} s, {size / 2**20:.0f} MB")
    with engine.begin() as connection:
        connection.execute(text("ANALYZE templates"))
    return built


def stack_figures(stack, images: list[str], rounds: int) -> dict:
    """Rounds of 32 identify jobs through the API and a worker (the first round warms it up), with
    each round's time split: submitting (first to last 202), the worker's batch stages (its "batch
    finished" log lines: detect = decode + detect + align, embed, search within compare, ...) and
    the rest (queueing, polling granularity, the stages not listed)."""
    from bench.harness import submit_all, wait_jobs

    bodies = [{"image": Path(p).read_bytes(), "top_k": TOP_K} for p in images[:BATCH]]
    walls, splits = [], []
    for round_ in range(rounds + 1):
        sent = submit_all(stack.api_url, stack.key, "identify", bodies, concurrency=BATCH)
        jobs = wait_jobs(stack, [s.job_id for s in sent], timeout=300)
        ok = [j for j in jobs.values() if j.status == "succeeded" and j.finished]
        if len(ok) != len(bodies):
            raise SystemExit(f"{len(bodies) - len(ok)} identify jobs did not succeed")
        wall = max(j.finished for j in ok) - min(s.sent for s in sent)
        if round_:
            walls.append(wall)
            splits.append(_split(stack, wall, sent, {j.batch_id for j in ok}))
            say(f"stack round {round_}: {wall:.2f} s, " + ", ".join(f"{k} {v:.2f}" for k, v in splits[-1].items()))
    return {
        "batch32_s": walls,
        "batch32_median_s": statistics.median(walls),
        "jobs_per_s": BATCH / statistics.median(walls),
        "split_s": splits,
        "load_average": _load(),
    }


def _split(stack, wall: float, sent: list, batch_ids: set) -> dict:
    """One round's seconds: submit span, batches, each stage summed over the round's batches, rest."""
    import json

    stages: dict[str, float] = {}
    batches = 0
    for log in sorted((stack.root / "logs").glob("worker-*.log")):
        for line in log.read_text().splitlines():
            if '"batch finished"' not in line:
                continue
            entry = json.loads(line)
            if entry.get("batch_id") in batch_ids:
                batches += 1
                for name, seconds in entry.get("stage_s", {}).items():
                    stages[name] = stages.get(name, 0.0) + seconds
    submit = max(s.answered for s in sent) - min(s.sent for s in sent)
    in_stages = sum(v for k, v in stages.items() if k != "search")  # search is part of compare
    split = {"batches": float(batches), "submit": submit, **stages}
    split["rest"] = max(0.0, wall - in_stages)
    return split


def _load() -> list[float]:
    import os

    return [round(v, 2) for v in os.getloadavg()]


def run(args) -> dict:
    from bench.harness import BenchStack
    from shared.db.session import get_engine, session_scope
    from shared.gallery_index import drop_index
    from shared.keys import get_or_create_tenant
    from shared.settings import Settings, get_settings

    settings = get_settings()
    real = real_descriptors(args.faces_dir, Path(args.cache))
    enrolled, probes = split_real(real)
    rng = np.random.default_rng(SEED)
    order = rng.permutation(len(probes))[: args.probes]
    probes = [probes[i] for i in order]
    probe_vectors = np.stack([p[1] for p in probes])
    colour_images = [p[2] for p in probes if "/lfw_colour/" in p[2]]
    colour_images += [p for _, _, p in split_real(real)[1] if "/lfw_colour/" in p and p not in colour_images]
    seeds = distractor_seeds(enrolled)
    results = {
        "settings": {k: getattr(settings, k) for k in Settings.model_fields if k.startswith("ann_")},
        "probes": len(probes),
        "seed": SEED,
        "sizes": [],
    }
    import torch

    from bench.model import machine

    results["machine"] = machine(torch.device("cpu"))
    with BenchStack(root=args.keep, log_level="WARNING", keep=args.keep is not None) as stack:
        engine = get_engine(stack.database_url)
        with session_scope(stack.database_url) as session:
            tenant_a = get_or_create_tenant(session, "bench")
            tenant_b = get_or_create_tenant(session, "bench-other")
        from worker.face.weights import RECOGNITION_MODEL, model_path, sha256_file
        from worker.versions import ensure_model_version

        ensure_model_version(stack.database_url, settings, sha256_file(model_path(RECOGNITION_MODEL)))
        version = settings.model_version
        a, b = Gallery(tenant_a, version), Gallery(tenant_b, version)
        for size in args.sizes:
            for gallery in (a, b):  # loading into an HNSW index is slow: it is built again below
                drop_index(engine, gallery.tenant_id, gallery.version)
            started = time.perf_counter()
            a.grow(engine, size, enrolled, seeds, rng)
            b.grow(engine, size // 10, {}, seeds, rng)
            load_s = time.perf_counter() - started
            say(f"size {size:,}: tenant A {a.templates:,}, tenant B {b.templates:,} templates ({load_s:.0f} s)")
            indexes = build_indexes(stack.database_url, settings, [a, b])
            exact_probes = min(args.probes, max(5, 300_000 // a.templates))  # the exact scan is slow
            exact_probes = exact_probes if args.exact_probes is None else args.exact_probes
            figures = search_figures(stack.database_url, settings, a, probe_vectors, exact_probes)
            answers = figures.pop("answers")
            truth = a.exact_top(probe_vectors, TOP_K)
            recall = np.mean(
                [len({c["subject_id"] for c in got} & set(want)) / TOP_K for got, want in zip(answers, truth)]
            )
            known = [i for i, p in enumerate(probes) if p[0] in a.names]
            first = sum(answers[i][0]["subject_id"] == probes[i][0] for i in known)
            first_exact = sum(truth[i][0] == probes[i][0] for i in known)
            other = search_figures(stack.database_url, settings, b, probe_vectors[: BATCH * 2], 0)
            other.pop("answers")
            row = {
                "size": size,
                "templates": a.templates,
                "second_tenant_templates": b.templates,
                "load_s": load_s,
                "indexes": indexes,
                "search": figures,
                "second_tenant_search": other,
                "recall_top5": float(recall),
                "right_first": first,
                "right_first_exact": first_exact,
                "known_probes": len(known),
            }
            if indexes and args.ef_sweep:
                row["ef_sweep"] = ef_sweep(stack.database_url, settings, a, probe_vectors, truth, args.ef_sweep)
            if size in args.stack_sizes:
                if stack.api_url is None:
                    stack.start_api()
                    stack.start_worker(ann_interval_s=0, log_level="INFO")
                row["stack"] = stack_figures(stack, colour_images, args.stack_rounds)
            results["sizes"].append(row)
            print_row(row)
            write_results(args.out, results)
            plot(results, args.plot)
    return results


def stack_only(args) -> dict:
    """Only the stack figures, on the gallery a run with --keep left in that folder; added to the
    results file under "stack_reruns"."""
    import json
    from datetime import UTC, datetime

    from sqlalchemy import text

    from bench.harness import TENANT, BenchStack
    from shared.db.session import session_scope

    real = real_descriptors(args.faces_dir, Path(args.cache))
    images = [p for _, _, p in split_real(real)[1] if "/lfw_colour/" in p]
    with BenchStack(root=args.keep, log_level="WARNING", keep=True) as stack:
        with session_scope(stack.database_url) as session:
            templates = session.execute(
                text("SELECT count(*) FROM templates t JOIN tenants n ON n.id = t.tenant_id WHERE n.name = :name"),
                {"name": TENANT},
            ).scalar_one()
        if not templates:
            raise SystemExit(f"no gallery in {args.keep}: run with --keep {args.keep} first")
        stack.start_api()
        stack.start_worker(ann_interval_s=0, log_level="INFO")
        figures = {"date": datetime.now(UTC).isoformat(timespec="seconds"), "templates": templates}
        figures.update(stack_figures(stack, images, args.stack_rounds))
    results = json.loads(args.out.read_text()) if args.out.exists() else {}
    results.setdefault("stack_reruns", []).append(figures)
    write_results(args.out, results)
    say(f"{templates:,} templates: 32 identify jobs through the stack, median {figures['batch32_median_s']:.2f} s")
    return figures


def print_row(row: dict) -> None:
    s = row["search"]
    stack = row.get("stack", {}).get("batch32_median_s")
    build = next(iter(row["indexes"].values()), {}).get("build_s") if row["indexes"] else None
    print(
        f"{row['templates']:>9,} | {s['path']:5} | alone p50 {s['alone_p50_ms']:.1f} p95 {s['alone_p95_ms']:.1f} ms | "
        f"batch32 p50 {s['batch32_p50_ms'] or 0:.0f} ms | exact {s['exact_scan_p50_ms'] or 0:.0f} ms | "
        f"recall {row['recall_top5']:.4f} | first {row['right_first']}/{row['known_probes']} "
        f"(exact {row['right_first_exact']}) | build {build or 0:.0f} s | stack 32 {stack or 0:.2f} s",
        flush=True,
    )


def plot(results: dict, path: Path) -> Path:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    rows = results["sizes"]
    sizes = [r["templates"] for r in rows]
    fig, ax = plt.subplots(figsize=(7, 4.5))
    for key, label in (
        ("alone_p50_ms", "search p50, one probe"),
        ("alone_p95_ms", "search p95, one probe"),
        ("exact_scan_p50_ms", "exact scan p50, one probe"),
    ):
        ax.plot(sizes, [r["search"][key] for r in rows], marker="o", label=label)
    per_probe = [r["search"]["batch32_p50_ms"] / BATCH if r["search"]["batch32_p50_ms"] else None for r in rows]
    ax.plot(sizes, per_probe, marker="o", label="search per probe, batch of 32")
    ax.set_xscale("log")
    ax.set_yscale("log")
    ax.set_xlabel("templates in the tenant's gallery")
    ax.set_ylabel("latency (ms)")
    ax.set_title("1:N search step, 2-core machine")
    ax.grid(True, which="both", alpha=0.3)
    ax.legend()
    fig.tight_layout()
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=120)
    plt.close(fig)
    return path


def main() -> None:
    from shared.settings import get_settings

    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--sizes", default="1000,10000,100000", help="templates of tenant A, comma-separated")
    parser.add_argument("--stack-sizes", default=None, help="sizes measured through the stack (default: the largest)")
    parser.add_argument("--stack-rounds", type=int, default=3)
    parser.add_argument("--probes", type=int, default=256)
    parser.add_argument("--exact-probes", type=int, default=None, help="probes timed on the exact scan")
    parser.add_argument("--ef-sweep", default="", help="hnsw.ef_search values to sweep at indexed sizes, e.g. 400,800")
    parser.add_argument("--faces-dir", type=Path, default=get_settings().faces_dir)
    parser.add_argument("--cache", default=str(get_settings().model_cache_dir / "bench-gallery-descriptors.npz"))
    parser.add_argument("--keep", type=Path, default=None, help="keep the stack's folder (gallery, indexes) here")
    parser.add_argument(
        "--stack-only", action="store_true", help="only the stack figures, on the gallery a --keep run left"
    )
    parser.add_argument("--distances", action="store_true", help="only the distance quantiles of real and synthetic")
    parser.add_argument("--out", type=Path, default=RESULTS)
    parser.add_argument("--plot", type=Path, default=PLOT)
    args = parser.parse_args()
    args.sizes = sorted(int(s) for s in args.sizes.split(","))
    args.stack_sizes = {int(s) for s in (args.stack_sizes or str(args.sizes[-1])).split(",") if s}  # 0: none
    args.ef_sweep = [int(v) for v in args.ef_sweep.split(",") if v]
    if args.distances:
        import json

        figures = distance_figures(real_descriptors(args.faces_dir, Path(args.cache)), args.faces_dir)
        results = json.loads(args.out.read_text()) if args.out.exists() else {}
        results["distances"] = figures
        write_results(args.out, results)
        for name, row in figures.items():
            print(f"{name:38} " + " ".join(f"{k} {v}" for k, v in row.items()), flush=True)
    elif args.stack_only:
        if args.keep is None:
            parser.error("--stack-only needs --keep DIR")
        stack_only(args)
    else:
        run(args)


if __name__ == "__main__":
    main()
