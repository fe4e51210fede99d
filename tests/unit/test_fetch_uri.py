"""The worker's reads of images by reference: S3 (moto) and local files, with the byte limit."""

import os

import boto3
import pytest
from moto import mock_aws

from worker.batch.fetch_uri import IMAGE_NOT_FOUND, read_reference
from worker.face.errors import IMAGE_TOO_LARGE
from worker.face.types import FaceResult


def code(result: bytes | FaceResult) -> str | None:
    return result.error_code if isinstance(result, FaceResult) else None


@pytest.fixture
def s3(monkeypatch):
    for name, value in {
        "AWS_ACCESS_KEY_ID": "testing",
        "AWS_SECRET_ACCESS_KEY": "testing",
        "AWS_DEFAULT_REGION": "us-east-1",
    }.items():
        monkeypatch.setenv(name, value)
    with mock_aws():
        client = boto3.client("s3")
        client.create_bucket(Bucket="gallery")
        yield client


def test_s3_object_within_the_limit_is_read(s3):
    s3.put_object(Bucket="gallery", Key="faces/a.jpg", Body=b"x" * 100)
    assert read_reference("s3://gallery/faces/a.jpg", 100, client=s3) == b"x" * 100


def test_s3_object_over_the_limit_is_image_too_large(s3):
    s3.put_object(Bucket="gallery", Key="faces/big.jpg", Body=b"x" * 101)
    assert code(read_reference("s3://gallery/faces/big.jpg", 100, client=s3)) == IMAGE_TOO_LARGE


def test_missing_s3_object_or_bucket_is_image_not_found(s3):
    assert code(read_reference("s3://gallery/faces/none.jpg", 100, client=s3)) == IMAGE_NOT_FOUND
    assert code(read_reference("s3://no-such-bucket/a.jpg", 100, client=s3)) == IMAGE_NOT_FOUND


def test_file_reads_and_limits(tmp_path):
    (tmp_path / "a.jpg").write_bytes(b"y" * 10)
    (tmp_path / "big.jpg").write_bytes(b"y" * 11)
    os.mkfifo(tmp_path / "pipe")
    base = tmp_path.as_uri()
    assert read_reference(f"{base}/a.jpg", 10) == b"y" * 10
    assert code(read_reference(f"{base}/big.jpg", 10)) == IMAGE_TOO_LARGE
    assert code(read_reference(f"{base}/none.jpg", 10)) == IMAGE_NOT_FOUND
    assert code(read_reference(base, 10)) == IMAGE_NOT_FOUND  # a folder
    assert code(read_reference(f"{base}/pipe", 10)) == IMAGE_NOT_FOUND  # never blocks on a FIFO
