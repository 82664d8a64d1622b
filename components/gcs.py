"""Google Cloud Storage access shared by the steps: one client, gs:// parsing, downloads, clear errors.

Credentials: Application Default Credentials, or the service-account key file named by
GOOGLE_APPLICATION_CREDENTIALS (or by the variable `client(credentials_env=...)` names: gcs.credentials_env),
or the key itself as JSON text in PLATEPIPE_GCS_KEY_JSON (how the pipeline's steps get the kfp.gcs_secret).
With STORAGE_EMULATOR_HOST set (tests, the local run), the same code talks to fake-gcs-server.
"""

from __future__ import annotations

import os
from pathlib import Path


KEY_JSON_ENV = "PLATEPIPE_GCS_KEY_JSON"  # a service-account key as JSON text (the pipeline's kfp.gcs_secret)


class GcsError(RuntimeError):
    """A storage problem, said in one sentence with the fix."""


def parse_uri(uri: str) -> tuple[str, str]:
    if not uri.startswith("gs://") or len(uri) <= 5:
        raise ValueError(f"{uri!r} is not a gs:// address: write gs://BUCKET/PATH")
    bucket, _, path = uri[5:].partition("/")
    if not bucket:
        raise ValueError(f"{uri!r} names no bucket: write gs://BUCKET/PATH")
    return bucket, path.strip("/")


def client(credentials_env: str | None = None):
    """A storage client. credentials_env names the environment variable holding a key file path: when it is
    set, that file is used (service-account key, or any credential file google-auth reads); else ADC."""
    from google.auth.exceptions import DefaultCredentialsError
    from google.cloud import storage

    if os.environ.get("STORAGE_EMULATOR_HOST"):
        from google.auth.credentials import AnonymousCredentials
        return storage.Client(project="platepipe-local", credentials=AnonymousCredentials())
    key_json = os.environ.get(KEY_JSON_ENV)
    if key_json:  # the pipeline's GCS secret, exposed as env by kfp.kubernetes
        return _client_from_key_json(storage, key_json)
    key = os.environ.get(credentials_env) if credentials_env else None
    if key:
        return _client_from_key_file(storage, credentials_env, key)
    try:
        return storage.Client()
    except DefaultCredentialsError as exc:
        raise GcsError("no Google Cloud credentials found: run `gcloud auth application-default login`, or set "
                       "GOOGLE_APPLICATION_CREDENTIALS to a service-account key file") from exc


def _client_from_key_json(storage, text: str):
    import json

    from google.auth.exceptions import GoogleAuthError
    from google.oauth2 import service_account

    try:
        info = json.loads(text)
        credentials = service_account.Credentials.from_service_account_info(info, scopes=list(storage.Client.SCOPE))
    except (ValueError, KeyError, AttributeError, GoogleAuthError) as exc:
        raise GcsError(f"{KEY_JSON_ENV} does not hold a service-account key JSON ({exc}): put the key file's "
                       "content under the key `key.json` of the Kubernetes secret named by kfp.gcs_secret") from exc
    return storage.Client(project=info.get("project_id"), credentials=credentials)


def _client_from_key_file(storage, env: str, key: str):
    import json

    import google.auth
    from google.auth.exceptions import GoogleAuthError

    fix = f"point {env} at a service-account key JSON file, or unset it to use Application Default Credentials"
    path = Path(key).expanduser()
    if not path.is_file():
        raise GcsError(f"{env} names the key file {key}, which does not exist: {fix}")
    try:
        kind = json.loads(path.read_text()).get("type")
        if kind == "service_account":
            return storage.Client.from_service_account_json(str(path))
        credentials, project = google.auth.load_credentials_from_file(str(path), scopes=list(storage.Client.SCOPE))
        return storage.Client(project=project, credentials=credentials)
    except (OSError, ValueError, KeyError, AttributeError, GoogleAuthError) as exc:
        raise GcsError(f"{env} names {key}, which is not a usable key file ({exc}): {fix}") from exc


def explain(exc: Exception, bucket: str) -> GcsError:
    """Turn a google-cloud error into one sentence with the fix."""
    from google.api_core import exceptions as gexc
    from google.auth.exceptions import DefaultCredentialsError, RefreshError

    if isinstance(exc, GcsError):
        return exc
    if isinstance(exc, DefaultCredentialsError):
        return GcsError("no Google Cloud credentials found: run `gcloud auth application-default login`, or set "
                        "GOOGLE_APPLICATION_CREDENTIALS to a service-account key file")
    if isinstance(exc, RefreshError):
        return GcsError("the Google Cloud credentials could not be refreshed (expired or revoked): run "
                        "`gcloud auth application-default login` again or check the key file")
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
