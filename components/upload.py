"""Upload step: an archive layout (from `platepipe archive`) to a new model version in GCS.

    DIR/model-store/<name>.mar            ->  gs://BUCKET/PREFIX/VERSION/model-store/<name>.mar       (1st)
    DIR/config/config.properties          ->  gs://BUCKET/PREFIX/VERSION/config/config.properties     (2nd)
    (sizes, hashes, time, source)         ->  gs://BUCKET/PREFIX/VERSION/platepipe-version.json       (last)

gs://BUCKET/PREFIX/VERSION is the storageUri KServe's pytorch predictor takes. Nothing is half written: a
version counts as complete only once its manifest (platepipe-version.json, written last) is there and matches
the objects; when an upload fails after its retries, what this attempt wrote is deleted again. A version is
never overwritten (if_generation_match=0, and a version folder that holds anything is refused) unless
force=True, which first removes the manifest so the version reads incomplete until the new one is whole.

Every object is checked after upload: its stored size, crc32c and md5 against the local file. Transient
errors (429, 5xx, dropped connections, checksum mismatches) are retried by google-api-core's Retry (exponential
backoff with jitter) around each write-and-verify, so that a mismatch found by reading the object back is
retried too; the calls inside pass retry=None, so that one policy, with one attempt count, decides.
"""

from __future__ import annotations

import base64
import hashlib
import io
import json
import logging
import os
import re
import socket
import time
from dataclasses import dataclass
from datetime import datetime, timezone
from pathlib import Path
from typing import Callable

from platepipe.components.gcs import GcsError, client, explain, parse_uri

_log = logging.getLogger(__name__)

MANIFEST = "platepipe-version.json"
CLAIM = ".uploading"  # held while an upload writes the version: one upload of a version at a time
CONFIG = "config/config.properties"
CHUNK_SIZE = 8 * 1024 * 1024  # resumable-upload chunk (a multiple of 256 KiB); larger files get progress lines
TRIES = 5                     # attempts per request, the first included
BACKOFF_S = 1.0               # first wait between attempts; doubles each time (with jitter), at most MAX_BACKOFF_S
MAX_BACKOFF_S = 30.0
TIMEOUT_S = 120.0             # per HTTP request
VERSION_RE = r"[A-Za-z0-9][A-Za-z0-9._-]{0,127}"

Progress = Callable[[str], None]


class LayoutError(ValueError):
    """The folder is not an archive layout; nothing was uploaded."""


@dataclass(frozen=True)
class Layout:
    root: Path
    mar: Path      # model-store/<name>.mar
    config: Path   # config/config.properties

    @property
    def model_name(self) -> str:
        return self.mar.stem

    def files(self) -> dict[str, Path]:
        """Object name under the version -> local file, in upload order (.mar first)."""
        return {f"model-store/{self.mar.name}": self.mar, CONFIG: self.config}


def find_layout(layout_dir: str | Path) -> Layout:
    root = Path(layout_dir)
    hint = "run `platepipe archive --model pipeline.pth --out DIR` to make one"
    if not root.is_dir():
        raise LayoutError(f"{root} is not a folder: give the layout made by platepipe archive ({hint})")
    store = root / "model-store"
    mars = sorted(p for p in store.glob("*.mar") if p.is_file()) if store.is_dir() else []
    if not mars:
        raise LayoutError(f"no .mar in {store}: {root} is not an archive layout ({hint})")
    if len(mars) > 1:
        raise LayoutError(f"{store} holds {len(mars)} .mar files ({', '.join(p.name for p in mars)}): "
                          f"keep exactly one, the model to serve")
    config = root / CONFIG
    if not config.is_file():
        raise LayoutError(f"{config} is missing: {root} is not a complete archive layout ({hint})")
    text = config.read_text(errors="replace")
    if '"marName"' in text and mars[0].name not in text:  # the model_snapshot written by platepipe archive
        raise LayoutError(f"{config} serves another .mar than {mars[0].name}: archive again so that the two match")
    return Layout(root, mars[0], config)


def model_card(mar: Path) -> dict | None:
    """What a version's manifest says of its model, from the pipeline.pth inside the .mar: the evaluation that let
    it through (EIR on the gate's set, the own split and each out-of-distribution set), the data it was trained
    on, the scores it reads at, when and from which source commit it was exported, and the pipeline run. None
    for a .mar that carries no platepipe model (it is uploaded all the same; `platepipe models` shows no figures)."""
    import zipfile

    import torch

    try:
        with zipfile.ZipFile(mar) as archive:
            payload = torch.load(io.BytesIO(archive.read("pipeline.pth")), map_location="cpu", weights_only=True)
    except (zipfile.BadZipFile, KeyError, RuntimeError, OSError, ValueError):
        return None
    if not isinstance(payload, dict):
        return None
    ev = payload.get("evaluation") or {}
    return {"eir": ev.get("eir"), "gate_set": ev.get("gate_set"), "gate_eir": ev.get("gate_eir"),
            "ood": {name: s.get("eir") if s.get("plates") else {"false_plates": s.get("false_plates")}
                    for name, s in (ev.get("ood") or {}).items()},
            "data_fingerprint": payload.get("data_fingerprint"), "thresholds": payload.get("thresholds"),
            "preset": (payload.get("train") or {}).get("preset"), "exported": payload.get("created"),
            "source": payload.get("source") or {}}


def file_hashes(path: str | Path | None = None, data: bytes | None = None) -> dict:
    """size, md5 and crc32c (base64, as GCS reports them) and sha256 (hex) of a file or of bytes."""
    import google_crc32c

    md5, sha, crc = hashlib.md5(), hashlib.sha256(), google_crc32c.Checksum()
    size = 0
    stream = open(path, "rb") if data is None else io.BytesIO(data)
    with stream:
        for block in iter(lambda: stream.read(1 << 20), b""):
            size += len(block)
            md5.update(block)
            sha.update(block)
            crc.update(block)
    return {"size": size, "md5": base64.b64encode(md5.digest()).decode(),
            "crc32c": base64.b64encode(crc.digest()).decode(), "sha256": sha.hexdigest()}


def default_version(mar_sha256: str, now: datetime | None = None) -> str:
    """UTC time + short hash of the .mar, e.g. 20261125-091500-3fa2c1d9: sorts by time, unique per model."""
    now = (now or datetime.now(timezone.utc)).astimezone(timezone.utc)
    return f"{now:%Y%m%d-%H%M%S}-{mar_sha256[:8]}"


def check_version(version: str) -> str:
    if not re.fullmatch(VERSION_RE, version or ""):
        raise ValueError(f"version {version!r}: use 1-128 letters, digits, '.', '_' or '-' (no '/'), "
                         f"starting with a letter or digit, e.g. 20261125-091500-3fa2c1d9")
    return version


def destination(gcs_cfg) -> str:
    """gs://BUCKET/PREFIX from the `gcs` configuration section."""
    if not gcs_cfg.bucket:
        raise ValueError("no GCS destination: pass --to gs://BUCKET/PREFIX, or set gcs.bucket "
                         "(e.g. --set gcs.bucket=my-bucket)")
    return f"gs://{gcs_cfg.bucket}/{gcs_cfg.prefix.strip('/')}".rstrip("/")


def _join(*parts: str) -> str:
    return "/".join(p.strip("/") for p in parts if p.strip("/"))


def human_size(n: float) -> str:
    for unit in ("B", "KB", "MB", "GB"):
        if n < 1024 or unit == "GB":
            return f"{n:.0f} {unit}" if unit == "B" else f"{n:.1f} {unit}"
        n /= 1024
    return f"{n:.1f} GB"


# -- retry -------------------------------------------------------------------------------------------------------


class _Mismatch(Exception):
    """The stored object is not the local bytes (corrupted on the way): worth another try."""


def _transient(exc: BaseException) -> bool:
    import requests
    from google.api_core import exceptions as gexc
    from google.auth.exceptions import TransportError
    from google.cloud.storage.exceptions import DataCorruption

    if isinstance(exc, gexc.GoogleAPICallError):
        return exc.code in (408, 429, 500, 502, 503, 504)
    return isinstance(exc, (requests.ConnectionError, requests.Timeout, requests.exceptions.ChunkedEncodingError,
                            TransportError, ConnectionError, TimeoutError, DataCorruption, _Mismatch))


@dataclass
class _Retry:
    """google-api-core's Retry (exponential backoff with jitter) around one step of an upload: an object written,
    then read back and compared, so that a checksum mismatch is retried like a dropped connection. At most
    `tries` attempts; each retry is said through progress."""

    tries: int = TRIES
    backoff_s: float = BACKOFF_S
    progress: Progress = _log.info

    def __call__(self, what: str, fn: Callable[[int], object]):
        """fn(attempt) until it returns; transient errors (_transient) are retried."""
        from google.api_core.retry import Retry

        attempt = 0

        def once():
            nonlocal attempt
            attempt += 1
            return fn(attempt)

        def on_error(exc: Exception) -> None:
            if attempt >= self.tries:
                raise exc
            self.progress(f"  {what}: {_short(exc)}; retrying (attempt {attempt + 1} of {self.tries})")

        return Retry(predicate=_transient, initial=self.backoff_s, maximum=MAX_BACKOFF_S, multiplier=2.0,
                     timeout=None, on_error=on_error)(once)()


def _short(exc: BaseException) -> str:
    text = str(exc).splitlines()[0] if str(exc) else type(exc).__name__
    return text if len(text) <= 160 else text[:157] + "..."


class _ProgressReader(io.RawIOBase):
    """Wraps the file for a resumable upload: the library reads chunk k+1 only once the server has acknowledged
    chunk k, so a read at offset N means N bytes are safely stored."""

    def __init__(self, f, name: str, size: int, progress: Progress):
        self.f, self.name, self.size, self.progress = f, name, size, progress
        self.reported = 0

    def readable(self) -> bool:
        return True

    def seekable(self) -> bool:
        return True

    def tell(self) -> int:
        return self.f.tell()

    def seek(self, offset: int, whence: int = 0) -> int:
        return self.f.seek(offset, whence)

    def read(self, n: int = -1) -> bytes:
        self.report(self.f.tell())
        return self.f.read(n)

    def report(self, done: int) -> None:
        if done > self.reported:
            self.reported = done
            self.progress(f"  {self.name}: {100 * done // self.size}% ({human_size(done)} of {human_size(self.size)})")


# -- upload ------------------------------------------------------------------------------------------------------


def upload(layout_dir: str | Path, dest_uri: str, version: str | None = None, force: bool = False,
           progress: Progress = _log.info, credentials_env: str | None = "GOOGLE_APPLICATION_CREDENTIALS",
           tries: int = TRIES, backoff_s: float = BACKOFF_S, chunk_size: int = CHUNK_SIZE,
           timeout_s: float = TIMEOUT_S) -> dict:
    """Upload an archive layout to gs://BUCKET/PREFIX/VERSION/ and return {storage_uri, version, objects, ...}.

    The layout is checked and hashed before anything is written. Raises LayoutError (ValueError) for a bad
    layout, GcsError (RuntimeError) for storage problems, each one sentence with the fix.
    """
    from google.api_core import exceptions as gexc

    layout = find_layout(layout_dir)
    card = model_card(layout.mar)
    bucket_name, prefix = parse_uri(dest_uri)
    if tries < 1:
        raise ValueError(f"tries {tries}: must be at least 1")
    if chunk_size <= 0 or chunk_size % (256 * 1024):
        raise ValueError(f"chunk_size {chunk_size}: must be a positive multiple of 256 KiB")
    files = layout.files()
    local = {name: file_hashes(path) for name, path in files.items()}
    version = check_version(version) if version else default_version(local[f"model-store/{layout.mar.name}"]["sha256"])
    root = _join(prefix, version)
    storage_uri = f"gs://{bucket_name}/{root}"
    retry = _Retry(tries, backoff_s, progress)

    gcs = client(credentials_env)
    bucket = gcs.bucket(bucket_name)
    written: dict[str, int] = {}   # object name -> generation this attempt wrote
    attempted: set[str] = set()
    before: set[tuple[str, int]] = set()  # (name, generation) of what was there already
    try:
        existing = retry(f"listing {storage_uri}/", lambda _: list(
            gcs.list_blobs(bucket_name, prefix=root + "/", retry=None, timeout=timeout_s)))
        if any(b.name == f"{root}/{CLAIM}" for b in existing) and not force:
            raise GcsError(_running(storage_uri))
        if existing and not force:
            names = ", ".join(b.name[len(root) + 1:] for b in existing[:3]) + (", ..." if len(existing) > 3 else "")
            raise GcsError(f"{storage_uri} already exists ({len(existing)} object(s): {names}): choose another "
                           f"--version, or pass --force to replace it")
        before = {(b.name, b.generation) for b in existing}
        # the claim: of uploads of one version at once exactly one creates it (if_generation_match=0), and only
        # the one that did writes anything else there
        attempted.add(f"{root}/{CLAIM}")
        claim = (json.dumps({"host": socket.gethostname(), "pid": os.getpid(), "started":
                             datetime.now(timezone.utc).strftime("%Y-%m-%dT%H:%M:%SZ")}) + "\n").encode()
        try:
            _put(bucket, root, CLAIM, claim, file_hashes(data=claim), force, written, retry, lambda _: None,
                 chunk_size, timeout_s)
        except _Taken:
            attempted.discard(f"{root}/{CLAIM}")
            raise GcsError(_running(storage_uri)) from None
        progress(f"uploading {layout.root} to {storage_uri}/")
        old_manifest = next((b for b in existing if b.name == f"{root}/{MANIFEST}"), None)
        if old_manifest is not None:  # force: the version reads incomplete until the new manifest is written
            progress(f"  removing the old {MANIFEST}: the version reads incomplete until it is whole again")
            retry(f"removing the old {MANIFEST}", lambda _: _delete(old_manifest, timeout_s))

        objects = []
        for name, path in files.items():
            attempted.add(f"{root}/{name}")
            blob = _put(bucket, root, name, path, local[name], force, written, retry, progress, chunk_size,
                        timeout_s)
            objects.append({"name": name, "uri": f"gs://{bucket_name}/{blob.name}", "size": blob.size,
                            "md5": blob.md5_hash, "crc32c": blob.crc32c, "generation": blob.generation,
                            "sha256": local[name]["sha256"]})

        keep = {f"{root}/{name}" for name in files} | {f"{root}/{MANIFEST}", f"{root}/{CLAIM}"}
        for stale in (b for b in existing if b.name not in keep):
            progress(f"  removing {stale.name[len(root) + 1:]} (not part of the new version)")
            retry(f"removing {stale.name}", lambda _, b=stale: _delete(b, timeout_s))

        manifest = {
            "format": 1, "version": version, "storage_uri": storage_uri, "model_name": layout.model_name,
            "created": datetime.now(timezone.utc).strftime("%Y-%m-%dT%H:%M:%SZ"),
            "model": card,
            "source": {"layout": str(layout.root.resolve()), "host": socket.gethostname(),
                       "platepipe": _platepipe_version()},
            "objects": {o["name"]: {k: o[k] for k in ("size", "md5", "crc32c", "sha256")} for o in objects},
        }
        data = (json.dumps(manifest, indent=2) + "\n").encode()
        local[MANIFEST] = file_hashes(data=data)
        attempted.add(f"{root}/{MANIFEST}")
        _put(bucket, root, MANIFEST, data, local[MANIFEST], force, written, retry, progress, chunk_size, timeout_s)
        retry(f"removing {CLAIM}", lambda _: _delete(bucket.blob(f"{root}/{CLAIM}", generation=written[f"{root}/{CLAIM}"]),
                                                     timeout_s))
    except BaseException as exc:
        left = _clean_up(gcs, bucket_name, root, attempted, written, before, local, retry, timeout_s)
        if not isinstance(exc, Exception):
            raise  # Ctrl-C: cleaned up, now stop
        if _transient(exc):
            err = GcsError(f"upload to {storage_uri} failed after {tries} attempt(s): {_short(exc)}: check the "
                           f"network and try again")
        elif isinstance(exc, (GcsError, gexc.GoogleAPIError)) or _is_auth(exc):
            err = explain(exc, bucket_name)
        else:
            raise  # a local problem (the layout changed while reading it, ...): as it is
        if left:
            err = GcsError(f"{err}; could not remove {', '.join(left)}: delete it with "
                           f"`gcloud storage rm -r {storage_uri}/`")
        elif attempted:
            err = GcsError(f"{err}; removed what this attempt wrote under {storage_uri}/" + (
                " (the version reads incomplete until an upload with --force succeeds)" if force else ""))
        raise err from exc
    return {"storage_uri": storage_uri, "version": version, "model_name": layout.model_name,
            "objects": objects, "manifest": f"{storage_uri}/{MANIFEST}", "created": manifest["created"]}


class _Taken(GcsError):
    """The object was created by someone else between our listing and our write."""


def _running(storage_uri: str) -> str:
    return (f"another upload of {storage_uri} is running (it holds {storage_uri}/{CLAIM}), or one was killed "
            f"before it finished: choose another --version; if none is running, pass --force to replace it")


def _is_auth(exc: BaseException) -> bool:
    from google.auth.exceptions import GoogleAuthError
    return isinstance(exc, GoogleAuthError)


def _platepipe_version() -> str:
    from importlib.metadata import PackageNotFoundError, version
    try:
        return version("platepipe")
    except PackageNotFoundError:
        return "dev"


def _delete(blob, timeout_s: float) -> None:
    from google.api_core import exceptions as gexc
    try:
        blob.delete(if_generation_match=blob.generation, retry=None, timeout=timeout_s)
    except gexc.NotFound:
        pass  # gone already (an earlier attempt whose answer was lost)


def _matches(blob, hashes: dict) -> list[str]:
    """What differs between a stored object and the local hashes (empty: the same bytes)."""
    problems = []
    if blob.size != hashes["size"]:
        problems.append(f"size {blob.size} != {hashes['size']}")
    if blob.crc32c and blob.crc32c != hashes["crc32c"]:
        problems.append(f"crc32c {blob.crc32c} != {hashes['crc32c']}")
    if blob.md5_hash and blob.md5_hash != hashes["md5"]:
        problems.append(f"md5 {blob.md5_hash} != {hashes['md5']}")
    if not blob.crc32c and not blob.md5_hash:
        problems.append("the server reported no checksum")
    return problems


def _put(bucket, root: str, short: str, source: Path | bytes, hashes: dict, force: bool, written: dict,
         retry: _Retry, progress: Progress, chunk_size: int, timeout_s: float):
    """ROOT/SHORT, uploaded (never over an existing object unless force), then checked against the local hashes."""
    from google.api_core import exceptions as gexc

    name = f"{root}/{short}"
    size = hashes["size"]
    chunked = size > chunk_size
    content_type = ("application/json" if name.endswith(".json") else
                    "text/plain" if name.endswith(".properties") else "application/octet-stream")
    started = time.monotonic()

    def attempt(n: int):
        blob = bucket.blob(name, chunk_size=chunk_size if chunked else None)
        f = open(source, "rb") if isinstance(source, Path) else io.BytesIO(source)
        with f:
            stream = _ProgressReader(f, short, size, progress) if chunked else f
            try:
                blob.upload_from_file(stream, size=size, content_type=content_type,
                                      if_generation_match=None if force else 0, retry=None, timeout=timeout_s)
            except gexc.PreconditionFailed:
                # An earlier attempt may have landed although its answer was lost: if it is our bytes, keep it.
                stored = bucket.get_blob(name, retry=None, timeout=timeout_s) if n > 1 else None
                if stored is not None and not _matches(stored, hashes):
                    written[name] = stored.generation
                    return stored
                raise _Taken(f"gs://{bucket.name}/{name} appeared while uploading (another upload of the same "
                             f"version?): choose another --version, or pass --force to replace it")
            if chunked:
                stream.report(size)
        written[name] = blob.generation
        blob.reload(retry=None, timeout=timeout_s)  # what the server stored, not what it answered
        problems = _matches(blob, hashes)
        if problems:
            _delete(blob, timeout_s)
            written.pop(name, None)
            raise _Mismatch(f"gs://{bucket.name}/{name} does not match the local file ({'; '.join(problems)})")
        return blob

    blob = retry(f"uploading {short}", attempt)
    took = time.monotonic() - started
    progress(f"  {short}: {human_size(size)} in {took:.1f} s, verified "
             f"(crc32c {hashes['crc32c']}, md5 {hashes['md5']})")
    return blob


def _clean_up(gcs, bucket_name: str, root: str, attempted: set[str], written: dict, before: set, local: dict,
              retry: _Retry, timeout_s: float) -> list[str]:
    """Delete what this attempt wrote under the version: objects it knows it wrote (by generation), and new
    objects whose upload answer was lost but whose bytes are ours. Returns the names it could not delete."""
    if not attempted:
        return []
    quiet = _Retry(min(retry.tries, 3), retry.backoff_s, retry.progress)
    try:
        stored = quiet("listing for clean-up", lambda _: list(
            gcs.list_blobs(bucket_name, prefix=root + "/", retry=None, timeout=timeout_s)))
    except Exception:  # noqa: BLE001 - we can only report what we know we wrote
        return sorted(written)
    left = []
    for blob in stored:
        rel = blob.name[len(root) + 1:]
        ours = written.get(blob.name) == blob.generation or (
            blob.name in attempted and (blob.name, blob.generation) not in before and rel in local
            and blob.md5_hash == local[rel]["md5"])
        if not ours:
            continue
        try:
            quiet(f"removing {rel}", lambda _, b=blob: _delete(b, timeout_s))
        except Exception:  # noqa: BLE001
            left.append(f"gs://{bucket_name}/{blob.name}")
    return left


# -- list --------------------------------------------------------------------------------------------------------


def list_versions(uri: str, credentials_env: str | None = "GOOGLE_APPLICATION_CREDENTIALS", tries: int = TRIES,
                  backoff_s: float = BACKOFF_S, timeout_s: float = TIMEOUT_S,
                  progress: Progress = lambda line: None) -> list[dict]:
    """The versions under gs://BUCKET/PREFIX, oldest first (newest last, by when each was last written).

    Each: version, storage_uri, complete (its manifest is there and every object it names matches), problem
    (why not complete, else None), size (bytes, all objects), objects (count), updated (UTC, ISO), model_name,
    model (the manifest's model card: figures, data fingerprint, source commit, run; None where there is none).
    """
    from google.api_core import exceptions as gexc

    bucket_name, prefix = parse_uri(uri)
    retry = _Retry(tries, backoff_s, progress)
    gcs = client(credentials_env)
    start = prefix + "/" if prefix else ""
    try:
        blobs = retry(f"listing {uri}", lambda _: list(
            gcs.list_blobs(bucket_name, prefix=start or None, retry=None, timeout=timeout_s)))
        groups: dict[str, list] = {}
        for blob in blobs:
            rel = blob.name[len(start):]
            if "/" in rel and not blob.name.endswith("/"):
                groups.setdefault(rel.split("/", 1)[0], []).append(blob)
        versions = []
        for version, members in groups.items():
            root = start + version
            by_rel = {b.name[len(root) + 1:]: b for b in members}
            last = max(b.updated for b in members).astimezone(timezone.utc)
            info = {"version": version, "storage_uri": f"gs://{bucket_name}/{root}", "complete": False,
                    "problem": None, "size": sum(b.size or 0 for b in members), "objects": len(members),
                    "updated": last.strftime("%Y-%m-%dT%H:%M:%SZ"),
                    "model_name": None, "model": None}
            manifest_blob = by_rel.get(MANIFEST)
            if manifest_blob is None:
                info["problem"] = f"no {MANIFEST}: an upload that did not finish, or one still running"
            else:
                try:
                    manifest = json.loads(retry(f"reading {root}/{MANIFEST}", lambda _, b=manifest_blob:
                                                b.download_as_bytes(retry=None, timeout=timeout_s)))
                    info["model_name"] = manifest.get("model_name")
                    info["model"] = manifest.get("model")
                    info["problem"] = _check_manifest(manifest, by_rel)
                except gexc.NotFound:
                    info["problem"] = f"{MANIFEST} vanished while listing"
                except (ValueError, AttributeError, TypeError) as exc:
                    info["problem"] = f"unreadable {MANIFEST} ({exc})"
                info["complete"] = info["problem"] is None
            versions.append((last, version, info))
    except gexc.GoogleAPIError as exc:
        raise explain(exc, bucket_name) from exc
    except Exception as exc:  # noqa: BLE001
        if _transient(exc) or _is_auth(exc):
            raise (explain(exc, bucket_name) if _is_auth(exc) else
                   GcsError(f"listing {uri} failed after {tries} attempt(s): {_short(exc)}: check the network "
                            f"and try again")) from exc
        raise
    return [info for _, _, info in sorted(versions, key=lambda v: v[:2])]


def _check_manifest(manifest: dict, by_rel: dict) -> str | None:
    objects = manifest.get("objects")
    if not isinstance(objects, dict) or not any(n.startswith("model-store/") for n in objects) or CONFIG not in objects:
        return f"{MANIFEST} names no .mar or no {CONFIG}"
    for name, want in objects.items():
        blob = by_rel.get(name)
        if blob is None:
            return f"{name} is missing"
        if blob.size != want.get("size") or (blob.md5_hash and blob.md5_hash != want.get("md5")):
            return f"{name} differs from {MANIFEST} (size or md5)"
    return None
