"""A batch's S3 side: which locations are `s3://` URLs, and the S3 file system they are
read and written through.

The endpoint and credentials come from the environment as for any AWS client
(AWS_ENDPOINT_URL for an S3-compatible store such as MinIO, AWS_ACCESS_KEY_ID,
AWS_SECRET_ACCESS_KEY, AWS_DEFAULT_REGION, AWS_PROFILE, or an instance role). s3fs, through
aiobotocore and botocore, reads AWS_ENDPOINT_URL itself, so no endpoint is passed here; Ray
workers started by a local `ray.init` inherit the driver's environment, and on a cluster
the pods' environment carries it.
"""

from __future__ import annotations

from pathlib import Path

import s3fs

S3_SCHEME = "s3://"
URI_SCHEMES = (S3_SCHEME, "http://", "https://")


def is_s3(location: str | Path) -> bool:
    """Whether `location` is an `s3://` URL rather than a local path."""
    return isinstance(location, str) and location.startswith(S3_SCHEME)


def is_uri(name: str) -> bool:
    """Whether a manifest line names an object or a URL (s3, http, https), not a path."""
    return name.startswith(URI_SCHEMES)


def s3_path(url: str) -> str:
    """The file system's path ("bucket/key") of an `s3://bucket/key` URL."""
    return url.removeprefix(S3_SCHEME)


def s3_filesystem() -> s3fs.S3FileSystem:
    """A client of the S3 the environment names. Not cached: a batch's outputs are written
    by other actors, so every listing asks the bucket."""
    return s3fs.S3FileSystem(skip_instance_cache=True, use_listings_cache=False)
