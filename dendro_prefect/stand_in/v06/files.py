"""Where the 0.6 service stand-in keeps job files: the stand-in's blob store, behind public URLs shaped as the
service's own (it keeps them on tempory.net: `https://tempory.net/f/dendro/f/<service>/<app>/<processor>/<job
id>/<output name>/<file base name>`; here `<stand-in>/f/dendro/f/...`).

A file URL is public and permanent, as tempory's are: it is what a job's `outputFileResults` and
`consoleOutputUrl` hold and what users download. Uploads go through signed, expiring URLs of the blob store.
Files of 1000 MiB and more are uploaded in parts (the service's multipart upload, S3-like: each part's PUT
answers its ETag, and finalizing joins the parts in order).
"""

from __future__ import annotations

import hashlib
import math
import shutil
from pathlib import Path
from urllib.parse import quote, unquote, urlsplit

from ..blobs import BlobStore
from .store import random_id

FILE_PATH_PREFIX = "/f/dendro/"
FILE_KEY_PREFIX = "dendro-v06/"
PART_KEY_PREFIX = "dendro-v06-parts/"
PART_ROUTE = "/f-parts"  # where the parts are PUT (the blob store's PUT route answers no ETag)
PART_SIZE = 1024 * 1024 * 1000  # the service's limit of a single upload, and the size of a part


class UploadRefused(ValueError):
    """With the words of the service's storage calls (the service answers them with HTTP 500)."""


def file_url(base_url: str, *segments: str) -> str:
    """The URL of a job file: `file_url(base, service, app, processor, job_id, output_name, file_base_name)`,
    or `(..., job_id, "other", other_name)` (an other name may hold slashes)."""
    path = "/".join(quote(segment, safe="/" if i == len(segments) - 1 else "") for i, segment in enumerate(segments))
    return f"{base_url.rstrip('/')}{FILE_PATH_PREFIX}f/{path}"


def file_key(url: str) -> str:
    """The blob key of a file URL; a URL that is not one of this store's is refused as the service refuses it."""
    path = urlsplit(url).path
    if not path.startswith(FILE_PATH_PREFIX):
        raise UploadRefused("Invalid url. Does not have proper prefix")
    return FILE_KEY_PREFIX + unquote(path[len(FILE_PATH_PREFIX):])


def signed_upload_url(blobs: BlobStore, base_url: str, url: str) -> str:
    return blobs.signed_url(base_url, file_key(url), "PUT")


def part_key(upload_id: str, part_number: int) -> str:
    return f"{PART_KEY_PREFIX}{upload_id}/{part_number}"


def initiate_multipart_upload(blobs: BlobStore, base_url: str, url: str, num_parts: int) -> tuple[str, list[dict]]:
    """(upload id, parts): a signed PUT URL for each part, at the part route (which answers an ETag)."""
    upload_id, base = random_id(32), base_url.rstrip("/")
    with blobs.writer(f"{PART_KEY_PREFIX}{upload_id}/target") as handle:
        handle.write(file_key(url).encode())
    parts = []
    for number in range(1, num_parts + 1):
        signed = blobs.signed_url(base_url, part_key(upload_id, number), "PUT")
        parts.append({"partNumber": number, "signedUrl": signed.replace(f"{base}/blobs/", f"{base}{PART_ROUTE}/", 1)})
    return upload_id, parts


def number_of_parts(size: int) -> int:
    return math.ceil(size / PART_SIZE)


def part_etag(content_md5: str) -> str:
    return f'"{content_md5}"'


def finalize_multipart_upload(blobs: BlobStore, url: str, upload_id: str, parts: list[tuple[int, str]],
                              size: int) -> None:
    """Join the uploaded parts, in part-number order, into the file; each must be there with its ETag."""
    key = _upload_target(blobs, url, upload_id, "Failed to finalize multipart upload")
    with blobs.writer(key) as handle:
        for number, etag in sorted(parts):
            path = blobs.path(part_key(upload_id, number))
            if not path.is_file() or part_etag(_md5(path)) != etag:
                raise UploadRefused("Failed to finalize multipart upload")
            with open(path, "rb") as part:
                shutil.copyfileobj(part, handle)
        if handle.tell() != size:
            raise UploadRefused("Failed to finalize multipart upload")
    _forget_upload(blobs, upload_id)


def _md5(path: Path) -> str:
    digest = hashlib.md5()
    with open(path, "rb") as handle:
        for chunk in iter(lambda: handle.read(1 << 20), b""):
            digest.update(chunk)
    return digest.hexdigest()


def cancel_multipart_upload(blobs: BlobStore, url: str, upload_id: str) -> None:
    _upload_target(blobs, url, upload_id, "Failed to cancel multipart upload")
    _forget_upload(blobs, upload_id)


def _upload_target(blobs: BlobStore, url: str, upload_id: str, failure: str) -> str:
    """The file an upload was initiated for, which must be the one `url` names."""
    key = file_key(url)
    if not upload_id.isalnum():  # ids are ours (random_id): anything else names no upload
        raise UploadRefused(failure)
    target = blobs.path(f"{PART_KEY_PREFIX}{upload_id}/target")
    if not target.is_file() or target.read_text() != key:
        raise UploadRefused(failure)
    return key


def _forget_upload(blobs: BlobStore, upload_id: str) -> None:
    shutil.rmtree(blobs.path(f"{PART_KEY_PREFIX}{upload_id}"), ignore_errors=True)
