"""Serving with real TorchServe 0.12 on loopback: archive, every body format, mixed good/bad batches,
concurrency with batchSize 4 under the env KServe sets, the bad-input corpus, metrics, clean stop."""

import base64
import io
import json
import struct
import threading
import time
import urllib.error
import urllib.request
import zlib
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import cv2
import numpy as np
import pytest

from platepipe.components.archive import archive, config_properties, properties_keys
from platepipe.pipeline.config import settings
from platepipe.components import local_server as server
from platepipe.serving.images import load_image
from platepipe.serving.reader import PlateReader

KEYS = {line.strip() for line in (Path(__file__).parent / "data" / "config-keys-0.12.0.txt").read_text().splitlines()
        if line.strip() and not line.startswith("#")}


@pytest.fixture(scope="module")
def model(tiny_model):
    return tiny_model


@pytest.fixture(scope="module")
def layout(model, tmp_path_factory):
    _, pth = model
    root = tmp_path_factory.mktemp("serving")
    spec = settings("serving", batch_size=4, max_batch_delay_ms=300, max_request_size_mb=2)
    return archive(pth, root / "layout", spec)


def start_as_kserve(layout, envelope):
    """TorchServe as KServe's runtime starts it, with the TS_SERVICE_ENVELOPE it sets for the protocol."""
    ports = [server.free_port() for _ in range(3)]
    return server.start(layout, inference_port=ports[0], management_port=ports[1], metrics_port=ports[2],
                        env={"TS_SERVICE_ENVELOPE": envelope}, timeout=240)


@pytest.fixture(scope="module")
def ts(layout):
    srv = start_as_kserve(layout, "kserve")
    yield srv
    server.stop(layout)


@pytest.fixture(scope="module")
def ts_v2(layout, tmp_path_factory):
    import shutil
    copy = tmp_path_factory.mktemp("v2") / "layout"
    shutil.copytree(layout, copy, ignore=shutil.ignore_patterns(".serve"))
    srv = start_as_kserve(copy, "kservev2")
    yield srv
    server.stop(copy)


def images(model, n=4):
    root, _ = model
    return [p.read_bytes() for p in sorted((root / "data" / "images").iterdir())[:n]]


def post(srv, path, body, content_type="application/json", token=True):
    headers = {"Content-Type": content_type, **(srv.headers() if token else {})}
    req = urllib.request.Request(srv.inference_url + path, data=body, headers=headers, method="POST")
    try:
        with urllib.request.urlopen(req, timeout=120) as resp:
            return resp.status, json.loads(resp.read())
    except urllib.error.HTTPError as exc:
        text = exc.read().decode(errors="replace")
        try:
            return exc.code, json.loads(text)
        except json.JSONDecodeError:
            return exc.code, {"raw": text}


def post_oversize(srv, path, size):
    """Announce a body over max_request_size and wait for the verdict before sending it (Expect: 100-continue):
    TorchServe answers 413 from the headers alone; sending the body first races its closing the connection."""
    import http.client
    from urllib.parse import urlsplit

    url = urlsplit(srv.inference_url)
    conn = http.client.HTTPConnection(url.hostname, url.port, timeout=30)
    try:
        conn.putrequest("POST", path)
        for key, value in {"Content-Type": "image/jpeg", "Content-Length": str(size), "Expect": "100-continue",
                           **srv.headers()}.items():
            conn.putheader(key, value)
        conn.endheaders()
        return conn.getresponse().status
    finally:
        conn.close()


def b64(data):
    return base64.b64encode(data).decode()


def worker_pids(srv):
    req = urllib.request.Request(f"{srv.management_url}/models/{srv.model_name}", headers=srv.headers("management"))
    with urllib.request.urlopen(req, timeout=10) as resp:
        return sorted(w["pid"] for entry in json.loads(resp.read()) for w in entry["workers"])


# ------------------------------------------------------------------------------------------- archive

def test_archive_layout_and_known_keys(layout):
    assert (layout / "model-store" / "pipeline.mar").stat().st_size > 10_000
    text = (layout / "config" / "config.properties").read_text()
    keys = properties_keys(text)
    assert set(keys) <= KEYS, f"keys TorchServe 0.12 does not read: {set(keys) - KEYS}"
    assert {"default_workers_per_model", "metrics_mode", "max_request_size", "model_snapshot",
            "inference_address", "enable_envvars_config"} <= set(keys)
    assert "metrics_mode=prometheus" in text and "enable_envvars_config=false" in text
    assert ":8080" not in text and "inference_address=http://0.0.0.0:8085" in text
    snapshot = json.loads(text.split("model_snapshot=", 1)[1].splitlines()[0])
    entry = snapshot["models"]["pipeline"]["1.0"]
    assert entry["batchSize"] == 4 and entry["maxBatchDelay"] == 300 and entry["marName"] == "pipeline.mar"


def test_every_config_variant_writes_known_keys():
    for spec in (settings("serving"), settings("serving", gpus=2, token_auth=True),
                 settings("serving", workers_per_model=3, batch_size=1)):
        assert set(properties_keys(config_properties(spec))) <= KEYS


def test_the_archive_carries_the_serving_folder_whole(layout):
    """Every file of serving/ goes into the .mar (as platepipe_serving), beside a one-line handler.py that
    TorchServe loads; nothing is picked by a hand-kept list."""
    import zipfile

    from platepipe.components.archive import ARCHIVED_PACKAGE

    serving = Path(__file__).resolve().parents[1] / "serving"
    wanted = {f"{ARCHIVED_PACKAGE}/{p.relative_to(serving)}" for p in serving.rglob("*")
              if p.is_file() and "__pycache__" not in p.parts}
    with zipfile.ZipFile(layout / "model-store" / "pipeline.mar") as mar:
        names = set(mar.namelist())
        handler = mar.read("handler.py").decode()
    assert wanted <= names, sorted(wanted - names)
    assert not any("__pycache__" in n for n in names)
    assert handler.strip().splitlines()[0].startswith(f"from {ARCHIVED_PACKAGE}.handler import handle")


def test_archive_refuses_bad_model_and_full_folder(model, tmp_path):
    junk = tmp_path / "junk.pth"
    junk.write_bytes(b"junk")
    with pytest.raises(ValueError, match="not a loadable pipeline.pth"):
        archive(junk, tmp_path / "out")
    (tmp_path / "full").mkdir()
    (tmp_path / "full" / "x").write_text("keep")
    with pytest.raises(FileExistsError):
        archive(model[1], tmp_path / "full")


# ------------------------------------------------------------------------------------------- serving

def test_every_body_format_answers_in_its_protocol(ts, model):
    imgs = images(model, 2)
    reader = PlateReader.from_file(model[1], device="cpu")
    expected = [r.plates for r in reader.predict([load_image(i) for i in imgs])]
    code, original = post(ts, "/predictions/pipeline", json.dumps({"data": b64(imgs[0])}).encode())
    assert code == 200 and original == {"response": expected[0]}
    code, raw = post(ts, "/predictions/pipeline", imgs[0], "image/jpeg")
    assert code == 200 and raw == {"response": expected[0]}
    code, v1 = post(ts, f"/v1/models/{ts.model_name}:predict",
                    json.dumps({"instances": [{"data": b64(imgs[0])}, {"b64": b64(imgs[1])}]}).encode())
    assert code == 200 and v1 == {"predictions": [{"response": expected[0]}, {"response": expected[1]}]}
    code, v2 = post(ts, f"/v2/models/{ts.model_name}/infer", json.dumps(
        {"inputs": [{"name": "images", "datatype": "BYTES", "shape": [2], "data": [b64(i) for i in imgs]}]}).encode())
    assert code == 200 and v2["model_name"] == "pipeline"
    out = v2["outputs"][0]
    assert out["shape"] == [2] and [json.loads(d) for d in out["data"]] == [{"response": e} for e in expected]


def test_token_auth_is_on(ts, model):
    code, answer = post(ts, "/predictions/pipeline", images(model, 1)[0], "image/jpeg", token=False)
    assert code in (400, 401) and "token" in json.dumps(answer).lower(), (code, answer)
    # the client says what to do, whether TorchServe answers a wrong token with 400 or 401
    from platepipe.components.client import ClientError, Endpoint, request
    for token in (None, "not-the-key"):
        with pytest.raises(ClientError, match="token auth is on: pass --token or --token-file"):
            request(Endpoint(ts.inference_url, token=token), images(model, 1), retries=0)


def _png(width, height, payload=b""):
    def chunk(kind, data):
        return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data) & 0xFFFFFFFF)
    ihdr = struct.pack(">IIBBBBB", width, height, 8, 0, 0, 0, 0)
    return b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", ihdr) + chunk(b"IDAT", zlib.compress(payload)) + chunk(b"IEND", b"")


def bad_inputs(good: bytes) -> dict:
    bomb = _png(30000, 30000, b"\x00" * 1000)  # 900 Mpx claimed in a tiny file
    return {
        "not base64": (json.dumps({"data": "%%% not base64 %%%"}).encode(), "application/json", "not valid base64"),
        "not an image": (json.dumps({"data": b64(b"hello, plates")}).encode(), "application/json", "not an image"),
        "truncated": (good[: len(good) // 3], "image/jpeg", "damaged or truncated"),
        "empty": (b"", "image/jpeg", "empty"),
        "zero size": (_png(0, 0), "image/png", ""),
        "decompression bomb": (bomb, "image/png", "pixels"),
        "wrong JSON shape": (json.dumps({"image": b64(good)}).encode(), "application/json", "wrong JSON shape"),
        "JSON list": (json.dumps([1, 2]).encode(), "application/json", "wrong JSON shape"),
        "bad v2 datatype": (json.dumps({"inputs": [{"datatype": "FP32", "data": [1.0]}]}).encode(),
                            "application/json", "BYTES"),
        "not JSON": (b"{not json", "application/json", "not valid JSON"),
        "deeply nested JSON": (b"[" * 100_000, "application/json", "nested too deeply"),
        "a 5,000-digit number": (b'{"data": ' + b"9" * 5000 + b"}", "application/json", "JSON number of 5,000"),
        "NaN": (b'{"data": NaN}', "application/json", "NaN is not JSON"),
        "a text body": (b"plates, please", "text/plain", "not JSON"),
        "v2 without images": (json.dumps({"inputs": [{"name": "images", "datatype": "BYTES", "shape": [0],
                                                      "data": []}]}).encode(), "application/json", "no images"),
        "v1 without images": (json.dumps({"instances": []}).encode(), "application/json", "non-empty list"),
        # two images of 49 Mpx each, under the per-image cap, 98 Mpx together: refused before decoding
        "over the request's pixel budget": (json.dumps({"instances": [{"data": b64(_png(7000, 7000))}] * 2}).encode(),
                                            "application/json", "max_request_pixels"),
    }


def test_bad_input_corpus_gets_4xx_and_worker_survives(ts, model):
    good = images(model, 1)[0]
    before = worker_pids(ts)
    for name, (body, ctype, words) in bad_inputs(good).items():
        code, answer = post(ts, "/predictions/pipeline", body, ctype)
        assert 400 <= code < 500, (name, code, answer)
        if words:
            assert words in json.dumps(answer), (name, answer)
    # over max_request_size (2 MB): TorchServe refuses it before the handler
    assert post_oversize(ts, "/predictions/pipeline", 3 * 1024 * 1024) == 413
    assert worker_pids(ts) == before  # no worker restarted
    code, answer = post(ts, "/predictions/pipeline", good, "image/jpeg")
    assert code == 200 and "response" in answer


def test_every_bad_kind_beside_valid_requests_in_one_batch_fails_alone(ts, model):
    """Three valid requests (original, v1, v2) and one bad one sent at once, batch size 4: the bad one gets its
    4xx and every valid one 200, for every kind of bad input, and no worker restarts."""
    good = images(model, 1)[0]
    valid = [("/predictions/pipeline", json.dumps({"data": b64(good)}).encode()),
             (f"/v1/models/{ts.model_name}:predict", json.dumps({"instances": [{"data": b64(good)}]}).encode()),
             (f"/v2/models/{ts.model_name}/infer", json.dumps({"inputs": [{"name": "images", "datatype": "BYTES",
                                                                           "shape": [1], "data": [b64(good)]}]}).encode())]
    before = worker_pids(ts)
    for name, (body, ctype, _) in bad_inputs(good).items():
        start = threading.Barrier(4)

        def send(item):
            path, data, content_type = item
            start.wait()
            return post(ts, path, data, content_type)

        with ThreadPoolExecutor(4) as pool:
            answers = list(pool.map(send, [(p, d, "application/json") for p, d in valid]
                                    + [("/predictions/pipeline", body, ctype)]))
        assert [code for code, _ in answers[:3]] == [200, 200, 200], (name, answers[:3])
        assert 400 <= answers[3][0] < 500 and "error" in answers[3][1], (name, answers[3])
    assert worker_pids(ts) == before


def test_base64_with_line_breaks_is_read(ts, model):
    good = images(model, 1)[0]
    wrapped = base64.encodebytes(good).decode()  # 76 characters a line, as the `base64` tool writes it
    assert "\n" in wrapped
    code, answer = post(ts, f"/v1/models/{ts.model_name}:predict", json.dumps({"instances": [{"b64": wrapped}]}).encode())
    assert code == 200 and len(answer["predictions"]) == 1


def test_state_and_keys_are_private(ts):
    for path, mode in ((ts.state_dir, 0o700), (ts.state_dir / "state.json", 0o600),
                       (ts.state_dir / "key_file.json", 0o600)):
        assert path.stat().st_mode & 0o777 == mode, (path, oct(path.stat().st_mode))


def test_batch_mixing_good_and_bad_requests(ts, model):
    good = images(model, 1)[0]
    bodies = [(good, "image/jpeg"), (b"garbage", "image/jpeg"), (json.dumps({"data": b64(good)}).encode(), "application/json"),
              (json.dumps({"data": 5}).encode(), "application/json")] * 2
    start = threading.Barrier(len(bodies))

    def send(item):
        start.wait()
        return post(ts, "/predictions/pipeline", *item)

    with ThreadPoolExecutor(len(bodies)) as pool:
        answers = list(pool.map(send, bodies))
    assert [code for code, _ in answers] == [200, 400, 200, 400] * 2
    assert "expected a base64 string" in answers[3][1]["error"]
    log = (ts.state_dir / "logs" / "model_log.log").read_text()
    sizes = [int(s.split()[0]) for s in log.split("batch of ")[1:]]
    assert max(sizes) > 1, "TorchServe never batched requests together"


@pytest.mark.parametrize("protocol", ["v1", "v2"])
def test_kserve_protocols_under_concurrency_with_batching(request, model, protocol):
    """batchSize 4, 4 concurrent clients, TS_SERVICE_ENVELOPE=kserve|kservev2 as KServe sets it: every answer
    is 200 and carries exactly its own request's images (the stock envelopes answer 503 here)."""
    ts = request.getfixturevalue("ts" if protocol == "v1" else "ts_v2")
    imgs = images(model, 3)
    path = f"/v1/models/{ts.model_name}:predict" if protocol == "v1" else f"/v2/models/{ts.model_name}/infer"

    def body(n):
        if protocol == "v1":
            return json.dumps({"instances": [{"data": b64(i)} for i in imgs[:n]]}).encode()
        return json.dumps({"inputs": [{"name": "images", "datatype": "BYTES", "shape": [n],
                                       "data": [b64(i) for i in imgs[:n]]}]}).encode()

    def count(answer):
        return len(answer["predictions"]) if protocol == "v1" else answer["outputs"][0]["shape"][0]

    jobs = [1 + i % 3 for i in range(24)]
    with ThreadPoolExecutor(4) as pool:
        answers = list(pool.map(lambda n: (n, post(ts, path, body(n))), jobs))
    assert all(code == 200 for _, (code, _) in answers), [a for a in answers if a[1][0] != 200][:2]
    assert all(count(answer) == n for n, (_, answer) in answers)


def test_metrics_endpoint(ts, model):
    post(ts, "/predictions/pipeline", images(model, 1)[0], "image/jpeg")
    with urllib.request.urlopen(f"{ts.metrics_url}/metrics", timeout=10) as resp:
        text = resp.read().decode()
    assert resp.status == 200 and "ts_inference_requests_total" in text


def test_clean_stop_leaves_nothing(layout, tmp_path):
    import shutil
    copy = tmp_path / "copy"
    shutil.copytree(layout, copy, ignore=shutil.ignore_patterns(".serve"))
    ports = [server.free_port() for _ in range(3)]
    srv = server.start(copy, inference_port=ports[0], management_port=ports[1], metrics_port=ports[2],
                       token_auth=False, timeout=240)
    pid = srv.pid
    with pytest.raises(server.ServeError, match="already in use"):
        server.start(copy, inference_port=ports[0], management_port=ports[1], metrics_port=ports[2])
    assert server.stop(copy)
    assert not server._alive(pid) and not server._workers_of(srv.state_dir)
    assert server._port_free(ports[0]) and server._port_free(ports[1])
    assert not server.stop(copy)  # nothing left to stop


def test_a_model_that_cannot_load_stops_the_start_with_its_error(layout, tmp_path):
    """A .mar whose pipeline.pth was damaged after archiving: the worker dies while loading, TorchServe would
    restart it for ever; start gives up after a few deaths with the handler's own error, and leaves nothing."""
    import shutil
    import zipfile

    copy = tmp_path / "broken"
    shutil.copytree(layout, copy, ignore=shutil.ignore_patterns(".serve"))
    mar = copy / "model-store" / "pipeline.mar"
    with zipfile.ZipFile(layout / "model-store" / "pipeline.mar") as src, zipfile.ZipFile(mar, "w") as dst:
        for item in src.infolist():
            data = src.read(item)
            dst.writestr(item, data[: len(data) // 2] if item.filename == "pipeline.pth" else data)
    ports = [server.free_port() for _ in range(3)]
    with pytest.raises(server.ServeError) as err:
        server.start(copy, inference_port=ports[0], management_port=ports[1], metrics_port=ports[2],
                     token_auth=False, timeout=400, echo=lambda *_: None)
    assert "cannot load: its worker died" in str(err.value) and "not a loadable pipeline.pth" in str(err.value)
    assert server.running(copy) is None and not server._workers_of(copy / ".serve")
    assert server._port_free(ports[0])


def test_missing_layout_is_a_clear_error(tmp_path):
    with pytest.raises(server.ServeError, match="platepipe archive"):
        server.start(tmp_path)
