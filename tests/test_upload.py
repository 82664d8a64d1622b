"""The upload step against the real fake-gcs-server: versions, verification, no overwrite, retries (through a
loopback proxy that fails chosen requests), clean-up after a failure, --list, the CLI."""

import base64
import hashlib
import http.client
import itertools
import json
import random
import re
import socket
import threading
import urllib.parse
from datetime import datetime, timedelta, timezone
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import google_crc32c
import pytest

from platepipe.components import upload as up
from platepipe.components.gcs import GcsError, client
from platepipe.pipeline.cli import main
from platepipe.pipeline.config import load_config

pytestmark = pytest.mark.timeout(120)

FAST = dict(backoff_s=0.01, timeout_s=15)  # retries without waiting; no request may hang a test


def make_layout(root: Path, size: int = 300_000, seed: int = 0, name: str = "pipeline") -> Path:
    (root / "model-store").mkdir(parents=True)
    (root / "config").mkdir()
    (root / "model-store" / f"{name}.mar").write_bytes(random.Random(seed).randbytes(size))
    (root / "config" / "config.properties").write_text(
        f"inference_address=http://0.0.0.0:8085\nmodel_store=/mnt/models/model-store\n"
        f'model_snapshot={{"models": {{"{name}": {{"1.0": {{"marName": "{name}.mar"}}}}}}}}\n')
    return root


def names(c, bucket: str, prefix: str) -> list[str]:
    return sorted(b.name for b in c.list_blobs(bucket, prefix=prefix))


@pytest.fixture
def bucket(gcs):
    """The bucket "models", and a client that talks to fake-gcs-server directly (never through a proxy)."""
    c = client()
    c.create_bucket("models")
    return c


# -- a loopback proxy that fails chosen requests -------------------------------------------------------------------

HOP = {"connection", "keep-alive", "transfer-encoding", "content-length", "proxy-connection", "te", "upgrade", "host"}
NAME = re.compile(rb'"name":\s*"([^"]+)"')


class FlakyProxy:
    """HTTP proxy on 127.0.0.1 in front of fake-gcs-server. rule(method, path, object_name) says what to do with
    each request: None forwards it; a status ("503", "429", "403", ...) is answered without forwarding; "drop"
    closes the connection without an answer; "lost" forwards it, then answers 503 (the write happened, its
    answer was lost)."""

    def __init__(self, upstream: str, rule):
        self.upstream = upstream
        self.rule = rule
        self.lock = threading.Lock()
        self.log: list[tuple[str, str, str | None, str | None]] = []
        self.conns: set[socket.socket] = set()
        proxy = self

        class Handler(BaseHTTPRequestHandler):
            protocol_version = "HTTP/1.1"
            timeout = 30

            def log_message(self, *args):
                pass

            def setup(self):
                super().setup()
                with proxy.lock:
                    proxy.conns.add(self.connection)

            def finish(self):
                with proxy.lock:
                    proxy.conns.discard(self.connection)
                super().finish()

            def _body(self) -> bytes:
                if self.headers.get("Transfer-Encoding", "").lower() == "chunked":
                    parts = []
                    while (size := int(self.rfile.readline().split(b";")[0], 16)):
                        parts.append(self.rfile.read(size))
                        self.rfile.readline()
                    self.rfile.readline()
                    return b"".join(parts)
                n = int(self.headers.get("Content-Length") or 0)
                return self.rfile.read(n) if n else b""

            def _handle(self):
                body = self._body()
                found = NAME.search(body[:4096])
                name = found.group(1).decode() if found else None
                with proxy.lock:
                    action = proxy.rule(self.command, self.path, name)
                    proxy.log.append((self.command, self.path, name, action))
                if action == "drop":
                    self.close_connection = True
                    return
                if action and action.isdigit():
                    return self._reply(int(action), [("Content-Type", "application/json")],
                                       b'{"error": {"code": %s, "message": "no"}}' % action.encode())
                up_url = urllib.parse.urlsplit(proxy.upstream)
                conn = http.client.HTTPConnection(up_url.hostname, up_url.port, timeout=30)
                try:
                    conn.request(self.command, self.path, body=body,
                                 headers={k: v for k, v in self.headers.items() if k.lower() not in HOP})
                    resp = conn.getresponse()
                    data = resp.read()
                finally:
                    conn.close()
                if action == "lost":
                    return self._reply(503, [("Content-Type", "application/json")],
                                       b'{"error": {"code": 503, "message": "answer lost"}}')
                headers = [(k, v.replace(proxy.upstream, proxy.url) if k.lower() == "location" else v)
                           for k, v in resp.getheaders() if k.lower() not in HOP]
                self._reply(resp.status, headers, data)

            do_GET = do_POST = do_PUT = do_DELETE = do_PATCH = _handle

            def _reply(self, status, headers, data):
                self.send_response(status)
                for k, v in headers:
                    self.send_header(k, v)
                self.send_header("Content-Length", str(len(data)))
                self.end_headers()
                self.wfile.write(data)

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.server.daemon_threads = False  # server_close() joins every handler thread
        self.url = f"http://127.0.0.1:{self.server.server_address[1]}"
        self.thread = threading.Thread(target=self.server.serve_forever, kwargs={"poll_interval": 0.05},
                                       name="flaky-proxy", daemon=True)

    def start(self) -> "FlakyProxy":
        self.thread.start()
        return self

    def stop(self) -> None:
        self.server.shutdown()
        with self.lock:
            conns = list(self.conns)
        for s in conns:  # wake handler threads waiting on idle keep-alive connections
            try:
                s.shutdown(socket.SHUT_RDWR)
            except OSError:
                pass
        self.server.server_close()
        self.thread.join(timeout=10)
        assert not self.thread.is_alive()

    def count(self, action=..., name: str | None = None, path: str = "/upload/") -> int:
        """Requests seen under path (uploads by default), with that action (any when not given)."""
        with self.lock:
            return sum(1 for m, p, n, a in self.log if p.startswith(path) and (action is ... or a == action)
                       and (name is None or (n or "").endswith(name)))


def fail(action: str, times: int | None = None, name: str | None = None, method: str | None = None):
    """A rule: `action` for the upload requests (of object `name`, by `method`), the first `times` (None: all)."""
    seen = itertools.count()

    def rule(m, path, obj):
        if not path.startswith("/upload/") or (name and not (obj or "").endswith(name)) or (method and m != method):
            return None
        return action if times is None or next(seen) < times else None
    return rule


@pytest.fixture
def proxy(gcs, monkeypatch):
    """proxy(rule) starts a FlakyProxy and points STORAGE_EMULATOR_HOST at it; every one is stopped afterwards."""
    started = []

    def make(rule):
        p = FlakyProxy(gcs.url, rule).start()
        started.append(p)
        monkeypatch.setenv("STORAGE_EMULATOR_HOST", p.url)
        return p
    yield make
    for p in started:
        p.stop()


# -- upload --------------------------------------------------------------------------------------------------------


def test_upload_writes_a_verified_version(bucket, tmp_path):
    layout = make_layout(tmp_path / "layout")
    mar = (layout / "model-store" / "pipeline.mar").read_bytes()
    lines = []
    result = up.upload(layout, "gs://models/platepipe", progress=lines.append, **FAST)

    version = result["version"]
    assert re.fullmatch(r"\d{8}-\d{6}-[0-9a-f]{8}", version)
    assert version.endswith(hashlib.sha256(mar).hexdigest()[:8])
    assert abs(datetime.strptime(version[:15], "%Y%m%d-%H%M%S").replace(tzinfo=timezone.utc)
               - datetime.now(timezone.utc)) < timedelta(minutes=5)
    root = f"platepipe/{version}"
    assert result["storage_uri"] == f"gs://models/{root}"
    assert names(bucket, "models", "platepipe/") == [f"{root}/config/config.properties",
                                                     f"{root}/model-store/pipeline.mar", f"{root}/{up.MANIFEST}"]
    b = bucket.bucket("models")
    assert b.blob(f"{root}/model-store/pipeline.mar").download_as_bytes() == mar
    assert b.blob(f"{root}/config/config.properties").download_as_bytes() == \
        (layout / "config" / "config.properties").read_bytes()

    stored = {x.name: x for x in bucket.list_blobs("models", prefix=root)}
    blob = stored[f"{root}/model-store/pipeline.mar"]
    assert blob.md5_hash == base64.b64encode(hashlib.md5(mar).digest()).decode()
    assert blob.crc32c == base64.b64encode(google_crc32c.Checksum(mar).digest()).decode()
    # written in this order: .mar, config, manifest last
    order = [stored[f"{root}/{n}"].updated for n in ("model-store/pipeline.mar", "config/config.properties",
                                                     up.MANIFEST)]
    assert order == sorted(order)

    manifest = json.loads(b.blob(f"{root}/{up.MANIFEST}").download_as_bytes())
    assert manifest["version"] == version and manifest["model_name"] == "pipeline"
    assert manifest["storage_uri"] == result["storage_uri"]
    assert manifest["objects"]["model-store/pipeline.mar"] == {
        "size": len(mar), "md5": blob.md5_hash, "crc32c": blob.crc32c, "sha256": hashlib.sha256(mar).hexdigest()}
    assert manifest["source"]["layout"] == str(layout.resolve())
    config_size = (layout / "config" / "config.properties").stat().st_size
    assert {o["name"]: o["size"] for o in result["objects"]} == {
        "model-store/pipeline.mar": len(mar), "config/config.properties": config_size}
    assert sum(", verified (crc32c" in line for line in lines) == 3
    assert not any("retrying" in line for line in lines)


def test_default_version_sorts_by_time():
    t = datetime(2026, 11, 25, 9, 15, 0, tzinfo=timezone.utc)
    later = [up.default_version("f" * 64, t), up.default_version("0" * 64, t + timedelta(seconds=1)),
             up.default_version("a" * 64, t + timedelta(hours=3)), up.default_version("1" * 64, t + timedelta(days=40))]
    assert later[0] == "20261125-091500-ffffffff"
    assert sorted(later) == later
    # a local time is turned into UTC
    assert up.default_version("ab" * 32, t.astimezone(timezone(timedelta(hours=9)))) == "20261125-091500-abababab"
    for bad in ("a/b", "", "-x", "x" * 200, "v 1"):
        with pytest.raises(ValueError, match="version"):
            up.check_version(bad)


def test_model_name_comes_from_the_mar(bucket, tmp_path):
    layout = make_layout(tmp_path / "layout", name="plates")
    result = up.upload(layout, "gs://models/a/b/", version="v1", progress=lambda _: None, **FAST)
    assert result["model_name"] == "plates" and result["storage_uri"] == "gs://models/a/b/v1"
    assert "a/b/v1/model-store/plates.mar" in names(bucket, "models", "a/")


def test_two_uploads_of_one_version_at_once_exactly_one_wins(bucket, tmp_path):
    """The same layout uploaded twice at the same moment (a retried pipeline step beside the first): one
    upload is stored whole, the other is refused with a sentence that says why, and removes nothing."""
    layout = make_layout(tmp_path / "one", seed=1, size=3 * 1024 * 1024)
    for round_ in range(3):
        version = f"r{round_}"
        start = threading.Barrier(2)
        outcome: list = [None, None]

        def run(i: int) -> None:
            start.wait()
            try:
                outcome[i] = up.upload(layout, "gs://models/pp", version=version, progress=lambda _: None, **FAST)
            except GcsError as exc:
                outcome[i] = exc

        threads = [threading.Thread(target=run, args=(i,)) for i in range(2)]
        for t in threads:
            t.start()
        for t in threads:
            t.join(timeout=120)
        won = [o for o in outcome if isinstance(o, dict)]
        lost = [o for o in outcome if isinstance(o, GcsError)]
        assert len(won) == 1 and len(lost) == 1, outcome
        assert re.search(rf"another upload of gs://models/pp/{version} is running|gs://models/pp/{version} already "
                         rf"exists", str(lost[0])), lost[0]
        listed = {v["version"]: v for v in up.list_versions("gs://models/pp")}
        assert listed[version]["complete"], listed[version]
        assert names(bucket, "models", f"pp/{version}/") == [
            f"pp/{version}/config/config.properties", f"pp/{version}/model-store/pipeline.mar",
            f"pp/{version}/{up.MANIFEST}"]  # the claim is gone once the upload is whole


def test_a_claim_left_by_a_killed_upload_blocks_the_version_until_forced(bucket, tmp_path):
    layout = make_layout(tmp_path / "one", seed=1)
    bucket.bucket("models").blob(f"pp/v1/{up.CLAIM}").upload_from_string(b"{}")
    with pytest.raises(GcsError, match=r"another upload of gs://models/pp/v1 is running .* pass --force"):
        up.upload(layout, "gs://models/pp", version="v1", progress=lambda _: None, **FAST)
    up.upload(layout, "gs://models/pp", version="v1", force=True, progress=lambda _: None, **FAST)
    assert f"pp/v1/{up.CLAIM}" not in names(bucket, "models", "pp/v1/")


def test_never_overwrites_a_version_unless_forced(bucket, tmp_path):
    first = make_layout(tmp_path / "one", seed=1)
    up.upload(first, "gs://models/pp", version="v1", progress=lambda _: None, **FAST)
    before = {b.name: (b.generation, b.md5_hash) for b in bucket.list_blobs("models", prefix="pp/")}

    second = make_layout(tmp_path / "two", seed=2, name="reader")
    with pytest.raises(GcsError, match=r"gs://models/pp/v1 already exists \(3 object\(s\).*--version, or pass --force"):
        up.upload(second, "gs://models/pp", version="v1", progress=lambda _: None, **FAST)
    assert {b.name: (b.generation, b.md5_hash) for b in bucket.list_blobs("models", prefix="pp/")} == before
    # even a partial version blocks it
    bucket.bucket("models").blob("pp/v2/model-store/pipeline.mar").upload_from_string(b"half")
    with pytest.raises(GcsError, match="pp/v2 already exists"):
        up.upload(first, "gs://models/pp", version="v2", progress=lambda _: None, **FAST)

    lines = []
    result = up.upload(second, "gs://models/pp", version="v1", force=True, progress=lines.append, **FAST)
    assert names(bucket, "models", "pp/v1/") == ["pp/v1/config/config.properties", "pp/v1/model-store/reader.mar",
                                                 f"pp/v1/{up.MANIFEST}"]  # the old pipeline.mar is gone
    assert bucket.bucket("models").blob("pp/v1/model-store/reader.mar").download_as_bytes() == \
        (second / "model-store" / "reader.mar").read_bytes()
    assert any("removing pipeline.mar" in line or "removing model-store/pipeline.mar" in line for line in lines)
    assert result["model_name"] == "reader"
    listed = {v["version"]: v for v in up.list_versions("gs://models/pp")}
    assert listed["v1"]["complete"] and listed["v1"]["model_name"] == "reader"


def test_list_versions_marks_incomplete_ones(bucket, tmp_path):
    assert up.list_versions("gs://models/pp") == []
    layout = make_layout(tmp_path / "layout")
    for v in ("v-b", "v-a"):  # written in this order: listed oldest first whatever the names
        up.upload(layout, "gs://models/pp", version=v, progress=lambda _: None, **FAST)
    b = bucket.bucket("models")
    b.blob("pp/v-c/model-store/pipeline.mar").upload_from_string(b"x" * 1000)  # an upload that stopped half-way
    up.upload(layout, "gs://models/pp", version="v-d", progress=lambda _: None, **FAST)
    b.blob("pp/v-d/config/config.properties").delete()                         # damaged after the fact
    b.blob("pp/stray.txt").upload_from_string(b"not a version")

    versions = up.list_versions("gs://models/pp")
    assert [v["version"] for v in versions] == ["v-b", "v-a", "v-c", "v-d"]
    assert [v["complete"] for v in versions] == [True, True, False, False]
    assert versions[0]["problem"] is None and versions[0]["storage_uri"] == "gs://models/pp/v-b"
    assert versions[0]["objects"] == 3 and versions[0]["size"] > 300_000
    assert "no platepipe-version.json" in versions[2]["problem"] and versions[2]["size"] == 1000
    assert versions[3]["problem"] == "config/config.properties is missing"


def test_missing_bucket_is_one_clear_sentence(gcs, tmp_path):
    layout = make_layout(tmp_path / "layout")
    for call in (lambda: up.upload(layout, "gs://nobucket/pp", progress=lambda _: None, **FAST),
                 lambda: up.list_versions("gs://nobucket/pp", **FAST)):
        with pytest.raises(GcsError, match=r"not found in gs://nobucket: .*buckets create gs://nobucket"):
            call()


@pytest.mark.parametrize("damage, message", [
    (lambda d: (d / "model-store" / "pipeline.mar").unlink(), "no .mar in"),
    (lambda d: (d / "model-store" / "other.mar").write_bytes(b"x"), r"holds 2 .mar files \(other.mar, pipeline.mar\)"),
    (lambda d: (d / "config" / "config.properties").unlink(), "config.properties is missing"),
    (lambda d: (d / "model-store" / "pipeline.mar").rename(d / "model-store" / "renamed.mar"),
     "serves another .mar than renamed.mar"),
])
def test_bad_layout_fails_before_anything_is_written(bucket, tmp_path, damage, message):
    layout = make_layout(tmp_path / "layout")
    damage(layout)
    with pytest.raises(up.LayoutError, match=message):
        up.upload(layout, "gs://models/pp", progress=lambda _: None, **FAST)
    with pytest.raises(up.LayoutError, match="is not a folder"):
        up.upload(tmp_path / "nope", "gs://models/pp", progress=lambda _: None, **FAST)
    assert names(bucket, "models", "") == []


def test_destination_from_config(tmp_path):
    with pytest.raises(ValueError, match="no GCS destination: pass --to gs://BUCKET/PREFIX, or set gcs.bucket"):
        up.destination(load_config(None, []).gcs)
    assert up.destination(load_config(None, ["gcs.bucket=my-models"]).gcs) == "gs://my-models/platepipe"
    assert up.destination(load_config(None, ["gcs.bucket=my-models", "gcs.prefix=''"]).gcs) == "gs://my-models"


# -- retries and clean-up, through the proxy -----------------------------------------------------------------------


@pytest.mark.parametrize("action", ["503", "429", "500", "drop", "lost"])
def test_transient_failures_are_retried(bucket, proxy, tmp_path, action):
    layout = make_layout(tmp_path / "layout")
    p = proxy(fail(action, times=2))
    lines = []
    result = up.upload(layout, "gs://models/pp", version="v1", tries=4, progress=lines.append, **FAST)
    # our retry did it: google-cloud-storage's own is off, so every retried request went through the proxy again
    assert p.count(action) == 2
    assert p.count(None) == 4  # the claim and three objects, each arriving once it got through
    assert sum("retrying (attempt" in line for line in lines) == 2
    stored = {b.name: b for b in bucket.list_blobs("models", prefix="pp/v1/")}
    mar = (layout / "model-store" / "pipeline.mar").read_bytes()
    assert stored["pp/v1/model-store/pipeline.mar"].md5_hash == base64.b64encode(hashlib.md5(mar).digest()).decode()
    assert bucket.bucket("models").blob("pp/v1/model-store/pipeline.mar").download_as_bytes() == mar
    assert [o["md5"] for o in result["objects"]] == [stored[f"pp/v1/{o['name']}"].md5_hash for o in result["objects"]]
    assert up.list_versions("gs://models/pp")[0]["complete"]


def test_without_retries_the_same_failure_is_an_error(bucket, proxy, tmp_path):
    """Shows the library does not retry by itself: with one try, one 503 ends the upload."""
    layout = make_layout(tmp_path / "layout")
    p = proxy(fail("503", times=1))
    with pytest.raises(GcsError, match=r"upload to gs://models/pp/v1 failed after 1 attempt\(s\): 503"):
        up.upload(layout, "gs://models/pp", version="v1", tries=1, progress=lambda _: None, **FAST)
    assert p.count() == 1
    assert names(bucket, "models", "pp/") == []


def test_chunked_upload_reports_progress_and_retries_a_chunk(bucket, proxy, tmp_path, monkeypatch):
    import google.cloud.storage.blob as gblob
    monkeypatch.setattr(gblob, "_MAX_MULTIPART_SIZE", 64 * 1024)  # so that a small file takes the resumable path
    layout = make_layout(tmp_path / "layout", size=700_000)
    puts = itertools.count()
    p = proxy(lambda m, path, obj: "503" if m == "PUT" and path.startswith("/upload/") and next(puts) == 1 else None)
    lines = []
    up.upload(layout, "gs://models/pp", version="v1", chunk_size=256 * 1024, progress=lines.append, **FAST)
    progress = [line for line in lines if line.startswith("  model-store/pipeline.mar: ") and "% (" in line]
    # attempt 1: chunk 1 stored, chunk 2 refused; attempt 2 starts again and sends all three chunks
    assert progress == ["  model-store/pipeline.mar: 37% (256.0 KB of 683.6 KB)",
                        "  model-store/pipeline.mar: 37% (256.0 KB of 683.6 KB)",
                        "  model-store/pipeline.mar: 74% (512.0 KB of 683.6 KB)",
                        "  model-store/pipeline.mar: 100% (683.6 KB of 683.6 KB)"]
    assert p.count("503") == 1 and sum(1 for m, path, *_ in p.log if m == "PUT") == 5
    assert bucket.bucket("models").blob("pp/v1/model-store/pipeline.mar").download_as_bytes() == \
        (layout / "model-store" / "pipeline.mar").read_bytes()
    assert up.list_versions("gs://models/pp")[0]["complete"]


@pytest.mark.parametrize("failing", ["model-store/pipeline.mar", "config/config.properties", up.MANIFEST])
@pytest.mark.parametrize("action", ["503", "lost"])
def test_a_failed_upload_leaves_no_half_written_version(bucket, proxy, tmp_path, failing, action):
    layout = make_layout(tmp_path / "layout")
    p = proxy(fail(action, name=failing))
    with pytest.raises(GcsError, match=r"failed after 3 attempt\(s\).*removed what this attempt wrote under "
                                       r"gs://models/pp/v1/"):
        up.upload(layout, "gs://models/pp", version="v1", tries=3, progress=lambda _: None, **FAST)
    assert p.count(action, name=failing) == 3
    assert names(bucket, "models", "pp/") == []
    assert up.list_versions("gs://models/pp") == []


def test_a_failed_forced_upload_reads_incomplete(bucket, proxy, tmp_path):
    layout = make_layout(tmp_path / "layout")
    up.upload(layout, "gs://models/pp", version="v1", progress=lambda _: None, **FAST)
    proxy(fail("503", name="config/config.properties"))
    with pytest.raises(GcsError, match="failed after 2 attempt"):
        up.upload(make_layout(tmp_path / "new", seed=5), "gs://models/pp", version="v1", force=True, tries=2,
                  progress=lambda _: None, **FAST)
    [v1] = up.list_versions("gs://models/pp", **FAST)
    assert not v1["complete"] and "no platepipe-version.json" in v1["problem"]


@pytest.mark.parametrize("status, message", [
    ("403", "no permission on gs://models: grant this account roles/storage.objectAdmin on the bucket"),
    # (401 cannot be shown here: on a 401 google-auth refreshes the credentials, and the emulator's anonymous
    # ones refuse to refresh)
])
def test_permission_errors_are_one_sentence_and_not_retried(bucket, proxy, tmp_path, status, message):
    layout = make_layout(tmp_path / "layout")
    p = proxy(fail(status))
    with pytest.raises(GcsError, match=re.escape(message)):
        up.upload(layout, "gs://models/pp", version="v1", progress=lambda _: None, **FAST)
    assert p.count(status) == 1
    assert names(bucket, "models", "pp/") == []


# -- credentials ---------------------------------------------------------------------------------------------------


def test_no_credentials_is_one_sentence(tmp_path, monkeypatch):
    for var in ("STORAGE_EMULATOR_HOST", "GOOGLE_APPLICATION_CREDENTIALS"):
        monkeypatch.delenv(var, raising=False)
    monkeypatch.setenv("CLOUDSDK_CONFIG", str(tmp_path / "gcloud"))  # no ADC file
    monkeypatch.setenv("NO_GCE_CHECK", "True")                      # no metadata server either
    with pytest.raises(GcsError, match=r"no Google Cloud credentials found: run `gcloud auth application-default "
                                       r"login`, or set GOOGLE_APPLICATION_CREDENTIALS"):
        up.upload(make_layout(tmp_path / "layout"), "gs://models/pp", progress=lambda _: None, **FAST)


def test_key_file_named_by_credentials_env(tmp_path, monkeypatch):
    monkeypatch.delenv("STORAGE_EMULATOR_HOST", raising=False)
    monkeypatch.setenv("MY_GCS_KEY", str(tmp_path / "missing.json"))
    layout = make_layout(tmp_path / "layout")
    with pytest.raises(GcsError, match=r"MY_GCS_KEY names the key file .*missing.json, which does not exist: point "
                                       r"MY_GCS_KEY at a service-account key JSON file"):
        up.upload(layout, "gs://models/pp", credentials_env="MY_GCS_KEY", progress=lambda _: None, **FAST)
    (tmp_path / "bad.json").write_text("{not json")
    monkeypatch.setenv("MY_GCS_KEY", str(tmp_path / "bad.json"))
    with pytest.raises(GcsError, match="MY_GCS_KEY names .*bad.json, which is not a usable key file"):
        client("MY_GCS_KEY")

    from cryptography.hazmat.primitives import serialization
    from cryptography.hazmat.primitives.asymmetric import rsa
    pem = rsa.generate_private_key(public_exponent=65537, key_size=2048).private_bytes(
        serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption()).decode()
    key = {"type": "service_account", "project_id": "key-project", "private_key_id": "1", "private_key": pem,
           "client_email": "uploader@key-project.iam.gserviceaccount.com", "client_id": "1",
           "token_uri": "https://oauth2.googleapis.com/token"}
    (tmp_path / "sa.json").write_text(json.dumps(key))
    monkeypatch.setenv("MY_GCS_KEY", str(tmp_path / "sa.json"))
    c = client("MY_GCS_KEY")  # no network: the key is only read
    assert c.project == "key-project"
    assert c._credentials.service_account_email == key["client_email"]


def test_key_json_in_env_from_the_pipeline_secret(tmp_path, monkeypatch):
    """In the cluster the kfp.gcs_secret reaches the steps as PLATEPIPE_GCS_KEY_JSON (the key's text)."""
    monkeypatch.delenv("STORAGE_EMULATOR_HOST", raising=False)
    monkeypatch.setenv("PLATEPIPE_GCS_KEY_JSON", "{not json")
    with pytest.raises(GcsError, match="PLATEPIPE_GCS_KEY_JSON does not hold a service-account key JSON.*key.json"):
        client()
    from cryptography.hazmat.primitives import serialization
    from cryptography.hazmat.primitives.asymmetric import rsa
    pem = rsa.generate_private_key(public_exponent=65537, key_size=2048).private_bytes(
        serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption()).decode()
    key = {"type": "service_account", "project_id": "secret-project", "private_key_id": "1", "private_key": pem,
           "client_email": "pipeline@secret-project.iam.gserviceaccount.com", "client_id": "1",
           "token_uri": "https://oauth2.googleapis.com/token"}
    monkeypatch.setenv("PLATEPIPE_GCS_KEY_JSON", json.dumps(key))
    c = client("GOOGLE_APPLICATION_CREDENTIALS")  # the key in env wins over a key file setting
    assert c.project == "secret-project"
    assert c._credentials.service_account_email == key["client_email"]


# -- CLI -----------------------------------------------------------------------------------------------------------


def test_cli_upload_and_list(bucket, tmp_path, capsys):
    layout = make_layout(tmp_path / "layout")
    assert main(["upload", str(layout), "--to", "gs://models/pp", "--version", "v1"]) == 0
    out = capsys.readouterr().out
    assert "storageUri: gs://models/pp/v1\n" in out and "verified" in out

    assert main(["upload", str(layout), "--set", "gcs.bucket=models"]) == 0  # --to from gcs.bucket / gcs.prefix
    default = re.search(r"storageUri: gs://models/platepipe/(\d{8}-\d{6}-[0-9a-f]{8})\n", capsys.readouterr().out)
    assert default

    assert main(["upload", str(layout), "--to", "gs://models/pp", "--version", "v1"]) == 2
    assert "platepipe upload: error: gs://models/pp/v1 already exists" in capsys.readouterr().err
    assert main(["upload", str(layout), "--to", "gs://models/pp", "--version", "v1", "--force"]) == 0
    capsys.readouterr()

    bucket.bucket("models").blob("pp/v2/model-store/pipeline.mar").upload_from_string(b"x")
    assert main(["upload", "--list", "gs://models/pp"]) == 0
    out = capsys.readouterr().out.splitlines()
    assert out[0] == "versions under gs://models/pp, oldest first (newest last):"
    assert re.match(r"  v1 .* complete +gs://models/pp/v1$", out[1])
    assert re.match(r"  v2 .* 1 B +INCOMPLETE \(no platepipe-version.json", out[2])

    assert main(["upload", "--list", "--set", "gcs.bucket=models"]) == 0
    assert default.group(1) in capsys.readouterr().out
    assert main(["upload", "--list", "gs://models/nothing"]) == 0
    assert "no versions under gs://models/nothing" in capsys.readouterr().out

    assert main(["upload", str(layout)]) == 2
    assert "no GCS destination: pass --to" in capsys.readouterr().err
    assert main(["upload"]) == 2
    assert "upload needs DIR" in capsys.readouterr().err
    assert main(["upload", str(layout), "--to", "gs://nobucket/pp"]) == 2
    assert "not found in gs://nobucket" in capsys.readouterr().err
