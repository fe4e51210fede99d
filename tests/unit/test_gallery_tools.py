"""Pure parts of gallery operations: calibration, model-version variants, enroll-dir state,
all-pairs impostors, and the batch's per-version descriptors."""

import json

import numpy as np
import pytest

from cli.calibrate import all_impostor_distances
from cli.enroll_dir import StateFile, SubjectSource, idempotency_key, list_subjects
from worker.face.calibration import bootstrap_interval, calibrate, fmr_at, match_threshold_at_fmr
from worker.variants import MultiEmbedder, check_preprocessing, embed_variant, jitter_transforms, jittered


def test_threshold_reproduces_the_fmr_it_was_chosen_for():
    rng = np.random.default_rng(3)
    impostor = rng.normal(0.9, 0.1, 20_000)
    for fmr in (1e-2, 1e-3):
        t = match_threshold_at_fmr(impostor, fmr)
        assert fmr_at(impostor, t) == pytest.approx(np.floor(fmr * impostor.size) / impostor.size)
        assert fmr_at(impostor, t) <= fmr


def test_too_few_impostors_give_no_threshold():
    assert match_threshold_at_fmr(np.linspace(0.5, 1.0, 999), 1e-3) is None
    report = calibrate(np.full(10, 0.3), np.linspace(0.5, 1.0, 500), target_fmr=1e-3, rounds=10)
    assert report["threshold"] is None and report["min_impostors"] == 1000
    assert report["fnmr_at_fmr"][1e-2] is not None and report["fnmr_at_fmr"][1e-4] is None


def test_calibration_report_on_separable_scores():
    rng = np.random.default_rng(0)
    genuine, impostor = rng.normal(0.4, 0.05, 300), rng.normal(0.8, 0.05, 5000)
    report = calibrate(genuine, impostor, target_fmr=1e-2, rounds=50)
    assert 0 <= report["eer"] < 0.01
    assert report["threshold_low"] <= report["threshold"] <= report["threshold_high"]
    assert report["fmr"] <= 1e-2 and report["fnmr"] < 0.05
    low, high = bootstrap_interval(genuine, impostor, 1e-2, rounds=50, seed=1)
    assert low < high


def test_all_impostor_distances_match_brute_force():
    rng = np.random.default_rng(1)
    names = ["a/a_1.jpg", "a/a_2.jpg", "b/b_1.jpg", "c/c_1.jpg"]
    vectors = rng.normal(size=(4, 128))
    expected = sorted(
        np.linalg.norm(vectors[i] - vectors[j])
        for i in range(4) for j in range(i + 1, 4) if names[i][0] != names[j][0]
    )  # fmt: skip
    assert np.allclose(sorted(all_impostor_distances(names, vectors)), expected)


def test_preprocessing_checks():
    check_preprocessing({"chip_size": 150, "jitter": 4})
    check_preprocessing({"flip": True})
    for bad in ({"jitter": 100}, {"chip_size": 200}, {"sharpen": 1}, {"jitter": 2, "flip": True}, {"flip": "yes"}):
        with pytest.raises(ValueError):
            check_preprocessing(bad)


class SumEmbedder:
    """A stand-in network: the descriptor is the mean pixel per channel, repeated."""

    weights_sha256 = "w"

    def __init__(self):
        self.calls = 0

    def embed(self, chips):
        self.calls += 1
        means = chips.reshape(len(chips), -1, 3).mean(axis=1)
        return np.tile(means, (1, 43))[:, :128].astype(np.float32)


def test_jitter_is_fixed_and_changes_the_chips():
    chips = np.random.default_rng(0).integers(0, 255, size=(2, 150, 150, 3), dtype=np.uint8)
    assert all(np.array_equal(a[0], b[0]) for a, b in zip(jitter_transforms(4), jitter_transforms(4)))
    once, again = jittered(chips, 4), jittered(chips, 4)
    assert once.shape == (8, 150, 150, 3) and np.array_equal(once, again)
    assert not np.array_equal(once[0], chips[0])


def test_multi_embedder_serves_several_versions_in_one_call():
    inner = SumEmbedder()
    multi = MultiEmbedder(inner)
    multi.want = {"plain": {}, "flip": {"flip": True}, "jitter": {"jitter": 4}}
    chips = np.random.default_rng(2).integers(0, 255, size=(3, 150, 150, 3), dtype=np.uint8)
    first = multi.embed(chips)
    assert set(multi.last) == {"plain", "flip", "jitter"}
    assert np.array_equal(first, multi.last["plain"])
    assert all(v.shape == (3, 128) for v in multi.last.values())
    assert np.allclose(multi.last["flip"], embed_variant(inner, chips, {}))  # mirror keeps channel means
    assert multi.weights_sha256 == "w"


def test_state_file_keeps_the_last_status_and_counts_failures(tmp_path):
    state = StateFile(tmp_path / "s.jsonl")
    state.record({"subject": "a", "attempt": 0, "job_id": "1", "status": "submitted"})
    state.record({"subject": "a", "attempt": 0, "job_id": "1", "status": "failed", "code": "no_face"})
    state.record({"subject": "b", "attempt": 0, "job_id": "2", "status": "succeeded"})
    with open(tmp_path / "s.jsonl", "a") as f:
        f.write('{"subject": "c", "att')  # cut short by an interruption
    again = StateFile(tmp_path / "s.jsonl")
    assert again.latest["a"]["status"] == "failed" and again.attempt("a") == 1
    assert again.latest["b"]["status"] == "succeeded" and again.attempt("b") == 0
    assert "c" not in again.latest


def test_idempotency_key_follows_subject_images_and_attempt():
    subject = SubjectSource("alice", ["/x/alice/1.jpg", "/x/alice/2.jpg"])
    assert idempotency_key(subject, 0) == idempotency_key(
        SubjectSource("alice", ["/y/alice/1.jpg", "/y/alice/2.jpg"]), 0
    )
    assert idempotency_key(subject, 0) != idempotency_key(subject, 1)
    assert idempotency_key(subject, 0) != idempotency_key(SubjectSource("alice", ["/x/alice/1.jpg"]), 0)


def test_list_subjects_takes_image_folders_and_the_first_samples(tmp_path):
    for name, files in {"bob": ["2.jpg", "1.png", "notes.txt"], "amy": ["a.jpg"], "empty": []}.items():
        (tmp_path / name).mkdir()
        for file in files:
            (tmp_path / name / file).write_bytes(b"x")
    found = list_subjects(str(tmp_path), samples=1)
    assert [(s.subject_id, [p.rsplit("/", 1)[1] for p in s.images]) for s in found] == [
        ("amy", ["a.jpg"]),
        ("bob", ["1.png"]),
    ]


def test_s3_subjects_are_listed_by_folder(monkeypatch):
    boto3 = pytest.importorskip("boto3")
    moto = pytest.importorskip("moto")
    monkeypatch.setenv("AWS_DEFAULT_REGION", "us-east-1")
    monkeypatch.setenv("AWS_ACCESS_KEY_ID", "testing")
    monkeypatch.setenv("AWS_SECRET_ACCESS_KEY", "testing")
    with moto.mock_aws():
        s3 = boto3.client("s3")
        s3.create_bucket(Bucket="gallery")
        for key in ("faces/amy/1.jpg", "faces/amy/2.jpg", "faces/bob/1.jpg", "faces/readme.txt", "other/x/1.jpg"):
            s3.put_object(Bucket="gallery", Key=key, Body=json.dumps(key).encode())
        found = list_subjects("s3://gallery/faces", samples=5)
        assert [(s.subject_id, len(s.images)) for s in found] == [("amy", 2), ("bob", 1)]
        from cli.enroll_dir import read_image

        assert read_image("s3://gallery/faces", found[1].images[0]) == b'"faces/bob/1.jpg"'


def test_the_worker_lists_its_queues_in_priority_order_reenroll_last():
    from shared.queues import JOB_QUEUES
    from worker.__main__ import worker_argv

    argv = worker_argv()
    queues = argv[argv.index("--queues") + 1].split(",")
    assert queues[0] == "verify" and queues[-1] == "reenroll"
    assert set(JOB_QUEUES) <= set(queues)


def test_reenroll_groups_keep_crops_apart_from_photos():
    import uuid

    from shared.gallery import SubjectImages

    subject = SubjectImages(uuid.uuid4(), uuid.uuid4(), "alice", ["a", "b", "c"], cropped={"b"})
    assert subject.groups() == [(False, ["a", "c"]), (True, ["b"])]
    assert SubjectImages(uuid.uuid4(), uuid.uuid4(), "bob", ["x"]).groups() == [(False, ["x"])]
