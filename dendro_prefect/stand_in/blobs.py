"""A directory-backed blob store with signed, expiring URLs, as the central's bucket.

An upload URL allows one PUT of raw bytes to one key; a download URL allows GET (with Range, which
the SDK's streamed reads use) of one key. Both carry `expires` and an HMAC over method, key and
expiry, so a URL cannot be reused for another key, method or time.
"""

from __future__ import annotations

import hashlib
import hmac
import os
import time
import uuid
from contextlib import contextmanager
from pathlib import Path
from typing import BinaryIO, Iterator
from urllib.parse import quote

URL_LIFETIME_SEC = 3600


class BlobStore:
    def __init__(self, root: Path, secret: bytes) -> None:
        self.root = root
        self.root.mkdir(parents=True, exist_ok=True)
        self._secret = secret

    def path(self, key: str) -> Path:
        path = (self.root / key).resolve()
        if self.root.resolve() not in path.parents:
            raise ValueError(f"blob key escapes the store: {key}")
        return path

    def _signature(self, method: str, key: str, expires: int) -> str:
        message = f"{method}\n/{key}\n{expires}".encode()
        return hmac.new(self._secret, message, hashlib.sha256).hexdigest()

    def signed_url(self, base_url: str, key: str, method: str, lifetime: int = URL_LIFETIME_SEC) -> str:
        expires = int(time.time()) + lifetime
        signature = self._signature(method, key, expires)
        return f"{base_url.rstrip('/')}/blobs/{quote(key)}?expires={expires}&signature={signature}"

    def check(self, method: str, key: str, expires: int, signature: str) -> str | None:
        """None when the URL is valid, else why not."""
        if expires < time.time():
            return "URL expired"
        if not hmac.compare_digest(self._signature(method, key, expires), signature):
            return "bad signature"
        return None

    @contextmanager
    def writer(self, key: str) -> Iterator[BinaryIO]:
        """Write to a temporary file and rename it into place, so readers never see half a blob."""
        path = self.path(key)
        path.parent.mkdir(parents=True, exist_ok=True)
        temporary = path.with_name(f".{path.name}.{uuid.uuid4().hex}")
        try:
            with open(temporary, "wb") as handle:
                yield handle
            os.replace(temporary, path)
        finally:
            temporary.unlink(missing_ok=True)

    def size(self, key: str) -> int | None:
        path = self.path(key)
        return path.stat().st_size if path.exists() else None
