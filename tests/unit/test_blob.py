"""The blob store: file back end on a temp folder, S3 back end on moto's mock_aws."""

import boto3
import pytest
from moto import mock_aws

from shared.blob import BlobNotFound, FileBlobStore, S3BlobStore, open_blob_store


@pytest.fixture(params=["file", "s3"])
def store(request, tmp_path, monkeypatch):
    if request.param == "file":
        yield open_blob_store((tmp_path / "blobs").as_uri())
        return
    for name, value in {
        "AWS_ACCESS_KEY_ID": "testing",
        "AWS_SECRET_ACCESS_KEY": "testing",
        "AWS_DEFAULT_REGION": "us-east-1",
    }.items():
        monkeypatch.setenv(name, value)
    with mock_aws():
        boto3.client("s3").create_bucket(Bucket="faces")
        yield open_blob_store("s3://faces/prod/images")


def test_put_get_roundtrip(store):
    data = bytes(range(256)) * 10
    store.put("t1/j1/0", data)
    assert store.get("t1/j1/0") == data
    store.put("t1/j1/0", b"new")  # overwrite
    assert store.get("t1/j1/0") == b"new"


def test_get_missing_raises(store):
    with pytest.raises(BlobNotFound):
        store.get("t1/nope/0")


def test_delete_is_idempotent(store):
    store.put("t1/j1/0", b"x")
    store.delete("t1/j1/0")
    store.delete("t1/j1/0")
    with pytest.raises(BlobNotFound):
        store.get("t1/j1/0")


def test_delete_prefix_deletes_only_under_prefix(store):
    for key in ("t1/j1/0", "t1/j1/1", "t1/j10/0", "t2/j1/0"):
        store.put(key, key.encode())
    assert store.delete_prefix("t1/j1/") == 2
    assert store.get("t1/j10/0") == b"t1/j10/0"
    assert store.get("t2/j1/0") == b"t2/j1/0"
    with pytest.raises(BlobNotFound):
        store.get("t1/j1/1")
    assert store.delete_prefix("t1/") == 1
    assert store.delete_prefix("t1/") == 0


@pytest.mark.parametrize("key", ["", "/abs", "a/../b", "a//b", "./a", "a/.."])
def test_bad_keys_rejected(store, key):
    with pytest.raises(ValueError):
        store.put(key, b"x")


def test_file_store_writes_under_root_only(tmp_path):
    store = FileBlobStore(tmp_path / "root")
    store.put("a/b/c", b"1")
    assert (tmp_path / "root" / "a" / "b" / "c").read_bytes() == b"1"
    store.delete("a/b/c")
    assert list((tmp_path / "root").iterdir()) == []  # empty folders pruned


def test_s3_objects_carry_the_url_prefix(monkeypatch):
    monkeypatch.setenv("AWS_DEFAULT_REGION", "us-east-1")
    monkeypatch.setenv("AWS_ACCESS_KEY_ID", "testing")
    monkeypatch.setenv("AWS_SECRET_ACCESS_KEY", "testing")
    with mock_aws():
        client = boto3.client("s3")
        client.create_bucket(Bucket="faces")
        store = S3BlobStore("faces", "/prod/images/", client=client)
        store.put("t/j/0", b"abc")
        names = [o["Key"] for o in client.list_objects_v2(Bucket="faces")["Contents"]]
        assert names == ["prod/images/t/j/0"]


@pytest.mark.parametrize("url", ["http://x/y", "s3:///nobucket", "file://host/dir"])
def test_unsupported_urls(url):
    with pytest.raises(ValueError):
        open_blob_store(url)


def test_put_all_writes_every_pair_or_none(store):
    """A pair that cannot be written: the error is raised and the pairs written are deleted."""
    from shared.blob import put_all

    put_all(store, [("t/a/0", b"a"), ("t/a/1", b"b")])
    assert store.get("t/a/0") == b"a" and store.get("t/a/1") == b"b"
    with pytest.raises(ValueError):
        put_all(store, [("t/b/0", b"a"), ("../escape", b"b"), ("t/b/2", b"c")])
    for key in ("t/b/0", "t/b/2"):
        with pytest.raises(BlobNotFound):
            store.get(key)
