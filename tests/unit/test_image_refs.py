"""Images by reference: parsing uris and prefixes, and the prefix check against path tricks."""

import pytest

from shared.image_refs import BadUri, allowed, is_reference, parse_prefix, parse_uri, prefix_text

PREFIXES = ["s3://bucket/faces/", "file:///srv/images"]


@pytest.mark.parametrize(
    "uri",
    [
        "s3://bucket/faces/ana/1.jpg",
        "s3://bucket/faces/x",
        "file:///srv/images/ana/1.jpg",
        "s3://bucket/faces/a%20b.jpg",  # a literal key: no segment decodes to a dot or a slash
    ],
)
def test_uris_under_a_prefix_are_allowed(uri):
    assert allowed(parse_uri(uri), PREFIXES)


@pytest.mark.parametrize(
    "uri",
    [
        "s3://bucket-evil/faces/ana.jpg",  # another bucket whose name starts the same
        "s3://bucket/faces-evil/ana.jpg",  # a folder whose name starts the same
        "s3://bucket/facesx",
        "s3://bucket/other/ana.jpg",
        "s3://bucket/faces",  # the folder itself, not an object in it
        "file:///srv/images-evil/a.jpg",
        "file:///srv/other/a.jpg",
        "s3://other/faces/ana.jpg",
    ],
)
def test_uris_outside_every_prefix_are_refused(uri):
    assert not allowed(parse_uri(uri), PREFIXES)


@pytest.mark.parametrize(
    "uri",
    [
        "s3://bucket/faces/../secret/x.jpg",
        "s3://bucket/faces/%2e%2e/secret/x.jpg",
        "s3://bucket/faces/%2E%2E/secret/x.jpg",
        "s3://bucket/faces/./x.jpg",
        "s3://bucket/faces//x.jpg",
        "s3://bucket/faces/a%2fb.jpg",
        "file:///srv/images/../../etc/passwd",
        "file:///srv/images/%2e%2e/%2e%2e/etc/passwd",
        "file://host/srv/images/a.jpg",
        "file:/srv/images/a.jpg",
        "http://bucket/faces/a.jpg",
        "S3://bucket/faces/a.jpg",
        "s3://Bucket_Upper/faces/a.jpg",
        "s3:///faces/a.jpg",
        "s3://bucket/",
        "s3://bucket/faces/a.jpg?versionId=1",
        "s3://bucket/faces/a.jpg#x",
        "s3://bucket/faces\\..\\x",
        "s3://bucket/faces/a\x00.jpg",
        "",
        "s3://bucket/" + "a" * 1100,
        None,
        ["s3://bucket/faces/a.jpg"],
    ],
)
def test_malformed_uris_are_refused(uri):
    with pytest.raises(BadUri):
        parse_uri(uri)


def test_prefixes_name_folders_in_canonical_form():
    assert prefix_text(parse_prefix("s3://bucket")) == "s3://bucket/"
    assert prefix_text(parse_prefix("s3://bucket/faces")) == "s3://bucket/faces/"
    assert prefix_text(parse_prefix("file:///srv/images/")) == "file:///srv/images/"
    assert allowed(parse_uri("s3://bucket/any/key.jpg"), ["s3://bucket"])
    assert not allowed(parse_uri("s3://bucket2/key.jpg"), ["s3://bucket"])
    for bad in ("file:///", "s3://bucket/../x", "ftp://x/y"):
        with pytest.raises(BadUri):
            parse_prefix(bad)
    assert not allowed(parse_uri("s3://bucket/a.jpg"), ["not a prefix", "s3://bucket/../"])


def test_canonical_uri_round_trips_and_references_are_told_from_blob_keys():
    for uri in ("s3://bucket/faces/a.jpg", "file:///srv/images/a.jpg"):
        assert parse_uri(uri).uri == uri
        assert is_reference(uri)
    assert not is_reference("0b6c/5f1e/0")
