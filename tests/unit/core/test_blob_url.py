"""Blob URLs: what is accepted, and a clear reason for everything else."""

from __future__ import annotations

import pytest
from training_core.blobs import parse_url
from training_core.blobs.base import BlobUrl
from training_core.errors import InvalidInput


@pytest.mark.parametrize(
    ("url", "parsed"),
    [
        (
            "gs://my-bucket/raw/dataset.zip",
            BlobUrl(scheme="gs", bucket="my-bucket", path="raw/dataset.zip"),
        ),
        ("gs://a.b_c-1/x", BlobUrl(scheme="gs", bucket="a.b_c-1", path="x")),
        (
            "file:///srv/bucket/models/m.pth",
            BlobUrl(scheme="file", bucket="", path="/srv/bucket/models/m.pth"),
        ),
    ],
)
def test_valid_urls_parse_and_print_back(url: str, parsed: BlobUrl) -> None:
    assert parse_url(url) == parsed
    assert str(parse_url(url)) == url


@pytest.mark.parametrize(
    "url", ["gs://bucket", "gs://bucket/", "gs://bucket/models/", "file:///srv/b/"]
)
def test_prefixes_may_name_a_bucket_root_or_folder(url: str) -> None:
    assert parse_url(url, prefix=True).scheme in ("gs", "file")


@pytest.mark.parametrize(
    ("url", "reason"),
    [
        ("s3://bucket/key", "unsupported blob URL"),
        ("https://storage.googleapis.com/b/o", "unsupported blob URL"),
        ("/srv/bucket/file", "unsupported blob URL"),
        ("gs:/bucket/key", "unsupported blob URL"),
        ("gs:///key", "no bucket name"),
        ("gs://bucket", "no object path"),
        ("gs://bucket/", "no object path"),
        ("gs://bucket/models/", "empty, '.' or '..' path segments"),
        ("gs://b/key", "invalid bucket name 'b'"),
        ("gs://My-Bucket/key", "invalid bucket name"),
        ("gs://-bucket/key", "letter or digit at both ends"),
        ("gs://bucket..x/key", "no '..'"),
        ("gs://" + "a" * 64 + "/key", "at most 63 characters"),
        ("gs://google-data/key", "'goog'"),
        ("gs://goog-data/key", "'goog'"),
        ("gs://192.168.1.1/key", "IP address"),
        ("gs://bucket/raw/../secrets", "'..' path segments"),
        ("gs://bucket/raw//x", "empty"),
        ("gs://bucket/./x", "'.'"),
        ("gs://bucket/a\nb", "control characters"),
        ("gs://bucket/" + "x" * 1025, "longer than 1024 bytes"),
        ("file://relative/path", "absolute path"),
        ("file:///", "no object path"),
        ("file:///srv/../etc/passwd", "'..'"),
    ],
)
def test_invalid_urls_are_refused_with_a_reason(url: str, reason: str) -> None:
    with pytest.raises(InvalidInput) as caught:
        parse_url(url)
    assert reason in str(caught.value)


def test_prefix_urls_still_refuse_traversal() -> None:
    with pytest.raises(InvalidInput, match=r"'\.\.'"):
        parse_url("gs://bucket/../", prefix=True)


def test_non_string_is_refused() -> None:
    with pytest.raises(InvalidInput, match="must be a string"):
        parse_url(None)  # type: ignore[arg-type]
