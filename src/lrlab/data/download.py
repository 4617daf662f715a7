"""Download a file with SHA-256 verification, written atomically so no half file is ever left."""

from __future__ import annotations

import hashlib
import os
import tempfile
import urllib.error
import urllib.request
from pathlib import Path

from lrlab.errors import UsageError

CHUNK_BYTES = 1 << 20


def download(url: str, destination: Path, sha256: str, timeout_seconds: float = 30) -> Path:
    """Fetch `url` to `destination`, refusing it unless its SHA-256 matches."""
    destination.parent.mkdir(parents=True, exist_ok=True)
    handle, temporary = tempfile.mkstemp(dir=destination.parent, prefix=f".{destination.name}.", suffix=".part")
    try:
        digest = hashlib.sha256()
        with os.fdopen(handle, "wb") as out, urllib.request.urlopen(url, timeout=timeout_seconds) as response:
            for chunk in iter(lambda: response.read(CHUNK_BYTES), b""):
                digest.update(chunk)
                out.write(chunk)
            out.flush()
            os.fsync(out.fileno())
        if digest.hexdigest() != sha256:
            raise UsageError(
                f"{url} does not match its published SHA-256 (got {digest.hexdigest()[:12]}..., "
                f"expected {sha256[:12]}...); the download was discarded"
            )
        os.replace(temporary, destination)
        return destination
    except (urllib.error.URLError, OSError, TimeoutError) as error:
        reason = getattr(error, "reason", error)
        raise DownloadFailed(f"could not download {url} ({reason})") from None
    finally:
        if os.path.exists(temporary):
            os.unlink(temporary)


def download_from_any(name: str, filename: str, official_urls: list[str], destination: Path, sha256: str) -> Path:
    """Fetch `filename` of data set `name` from $LRLAB_MIRROR/<name>/<filename> when that is set, else from
    the first official URL that answers; raises the last DownloadFailed if none does."""
    mirror = os.environ.get("LRLAB_MIRROR")
    urls = [f"{mirror.rstrip('/')}/{name}/{filename}"] if mirror else official_urls
    for url in urls[:-1]:
        try:
            return download(url, destination, sha256)
        except DownloadFailed:
            continue
    return download(urls[-1], destination, sha256)


class DownloadFailed(UsageError):
    """The network or the server failed; the caller says where to put the files instead."""
