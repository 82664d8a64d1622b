"""Google Cloud Storage access shared by the steps: one client, gs:// parsing, downloads, clear errors.

Credentials: Application Default Credentials, or the service-account key file named by
GOOGLE_APPLICATION_CREDENTIALS. With STORAGE_EMULATOR_HOST set (tests, the local run), the same code talks
to fake-gcs-server.
"""

from __future__ import annotations

import os
from pathlib import Path


class GcsError(RuntimeError):
    """A storage problem, said in one sentence with the fix."""


def parse_uri(uri: str) -> tuple[str, str]:
    if not uri.startswith("gs://") or len(uri) <= 5:
        raise ValueError(f"{uri!r} is not a gs:// address: write gs://BUCKET/PATH")
    bucket, _, path = uri[5:].partition("/")
    if not bucket:
        raise ValueError(f"{uri!r} names no bucket: write gs://BUCKET/PATH")
    return bucket, path.strip("/")


def client():
    from google.auth.exceptions import DefaultCredentialsError
    from google.cloud import storage

    if os.environ.get("STORAGE_EMULATOR_HOST"):
        from google.auth.credentials import AnonymousCredentials
        return storage.Client(project="platepipe-local", credentials=AnonymousCredentials())
    try:
        return storage.Client()
    except DefaultCredentialsError as exc:
        raise GcsError("no Google Cloud credentials found: run `gcloud auth application-default login`, or set "
                       "GOOGLE_APPLICATION_CREDENTIALS to a service-account key file") from exc


def explain(exc: Exception, bucket: str) -> GcsError:
    """Turn a google-cloud error into one sentence with the fix."""
    from google.api_core import exceptions as gexc

    if isinstance(exc, gexc.NotFound):
        return GcsError(f"bucket or object not found in gs://{bucket}: check the name, or create the bucket with "
                        f"`gcloud storage buckets create gs://{bucket}`")
    if isinstance(exc, gexc.Forbidden):
        return GcsError(f"no permission on gs://{bucket}: grant this account roles/storage.objectAdmin on the bucket "
                        "(or objectViewer to read)")
    if isinstance(exc, gexc.Unauthorized):
        return GcsError("the Google Cloud credentials were refused: refresh them with "
                        "`gcloud auth application-default login` or check the key file")
    return GcsError(f"storage error on gs://{bucket}: {exc}")


def download(uri: str, dest: str | Path) -> Path:
    """One object to a local file (written beside it first, then renamed)."""
    from google.api_core import exceptions as gexc

    bucket, path = parse_uri(uri)
    dest = Path(dest)
    dest.parent.mkdir(parents=True, exist_ok=True)
    tmp = dest.with_name(dest.name + ".partial")
    try:
        client().bucket(bucket).blob(path).download_to_filename(str(tmp))
    except gexc.GoogleAPIError as exc:
        tmp.unlink(missing_ok=True)
        raise explain(exc, bucket) from exc
    os.replace(tmp, dest)
    return dest


def download_prefix(uri: str, dest_dir: str | Path) -> Path:
    """Every object under gs://BUCKET/PREFIX/ into dest_dir, keeping the relative paths."""
    from google.api_core import exceptions as gexc

    bucket, prefix = parse_uri(uri)
    dest_dir = Path(dest_dir)
    try:
        blobs = [b for b in client().list_blobs(bucket, prefix=prefix + "/" if prefix else None)
                 if not b.name.endswith("/")]
        if not blobs:
            raise GcsError(f"nothing found under {uri}: check the path (gcloud storage ls {uri})")
        for blob in blobs:
            rel = blob.name[len(prefix):].lstrip("/") if prefix else blob.name
            target = dest_dir / rel
            target.parent.mkdir(parents=True, exist_ok=True)
            blob.download_to_filename(str(target))
    except gexc.GoogleAPIError as exc:
        raise explain(exc, bucket) from exc
    return dest_dir
