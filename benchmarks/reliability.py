"""Reliability of the serving path: bad input, load with bad requests mixed in, and the worst allowed request.

    .venv/bin/python benchmarks/reliability.py --model RUN/…/pipeline.pth [--work runs/reliability] [--seconds 120]

1. archives the model (batchSize 4, one worker, the default request limits) and starts TorchServe on loopback;
2. the bad-input corpus: every kind of bad body, in each protocol it can be sent in (original, raw image,
   KServe v1, v2), once each: the status of each;
3. load: 4 clients for --seconds, one request in five drawn from the corpus, the rest valid (1-3 images, the three
   protocols): valid requests that failed (must be 0), worker restarts (must be 0), the worker's memory before
   and after;
4. the worst request the limits allow (images just under serving.max_request_pixels and max_request_decoded_mb
   together): the worker's peak memory (VmHWM) before and after it.
Prints Markdown tables and writes WORK/reliability.json.
"""

from __future__ import annotations

import argparse
import base64
import io
import json
import random
import struct
import threading
import time
import urllib.error
import urllib.request
import zlib
from collections import Counter
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path


def b64(data: bytes) -> str:
    return base64.b64encode(data).decode()


def png_header(width: int, height: int) -> bytes:
    """A PNG that claims width x height and holds almost nothing."""
    def chunk(kind, data):
        return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data) & 0xFFFFFFFF)
    return (b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", struct.pack(">IIBBBBB", width, height, 8, 0, 0, 0, 0))
            + chunk(b"IDAT", zlib.compress(b"")) + chunk(b"IEND", b""))


def photo(width: int, height: int, seed: int) -> bytes:
    """A JPEG of noise (worst case for the decoder's work) of this size."""
    import numpy as np
    from PIL import Image
    rng = np.random.default_rng(seed)
    out = io.BytesIO()
    Image.fromarray(rng.integers(0, 255, (height, width, 3), dtype=np.uint8)).save(out, "JPEG", quality=80)
    return out.getvalue()


def flat_png(side: int) -> bytes:
    from PIL import Image
    out = io.BytesIO()
    Image.new("RGB", (side, side), (90, 120, 150)).save(out, "PNG")
    return out.getvalue()


def wrap(protocol: str, images: list[str]) -> tuple[str, bytes]:
    if protocol == "original":
        return "original", json.dumps({"data": images[0]}).encode()
    if protocol == "v1":
        return "v1", json.dumps({"instances": [{"data": i} for i in images]}).encode()
    return "v2", json.dumps({"inputs": [{"name": "images", "datatype": "BYTES", "shape": [len(images)],
                                         "data": images}]}).encode()


def corpus(good: bytes) -> list[tuple[str, str, bytes, str]]:
    """(kind, protocol, body, content type) of every bad request."""
    image_kinds = {"not an image": b"hello, plates", "truncated JPEG": good[: len(good) // 3], "empty image": b"",
                   "0x0 PNG": png_header(0, 0), "decompression bomb (900 Mpx)": png_header(30000, 30000)}
    out = []
    for kind, data in image_kinds.items():
        for protocol in ("original", "v1", "v2"):
            out.append((kind, protocol, wrap(protocol, [b64(data)])[1], "application/json"))
        out.append((kind, "raw", data, "image/jpeg"))
    body_kinds = {
        "not JSON": (b"{not json", "application/json"), "deeply nested JSON": (b"[" * 100_000, "application/json"),
        "5,000-digit number": (b'{"data": ' + b"9" * 5000 + b"}", "application/json"),
        "NaN": (b'{"data": NaN}', "application/json"), "text body": (b"plates, please", "text/plain"),
        "JSON list": (b"[1, 2]", "application/json"), "wrong shape": (b'{"image": "x"}', "application/json"),
        "not base64": (b'{"data": "%%%"}', "application/json"),
    }
    out += [(kind, "any", body, ctype) for kind, (body, ctype) in body_kinds.items()]
    per_protocol = {
        "no images": {"v1": {"instances": []}, "v2": {"inputs": [{"name": "i", "datatype": "BYTES", "shape": [0], "data": []}]}},
        "17 images (over max_images_per_request)": {p: json.loads(wrap(p, [b64(good)] * 17)[1]) for p in ("v1", "v2")},
        "2 x 49 Mpx (over max_request_pixels)": {p: json.loads(wrap(p, [b64(png_header(7000, 7000))] * 2)[1])
                                                  for p in ("v1", "v2")},
        "wrong v2 datatype": {"v2": {"inputs": [{"name": "i", "datatype": "FP32", "shape": [1], "data": [1.0]}]}},
    }
    for kind, bodies in per_protocol.items():
        out += [(kind, p, json.dumps(b).encode(), "application/json") for p, b in bodies.items()]
    return out


PATHS = {"original": "/predictions/{m}", "raw": "/predictions/{m}", "any": "/predictions/{m}",
         "v1": "/v1/models/{m}:predict", "v2": "/v2/models/{m}/infer"}


def send(srv, protocol: str, body: bytes, ctype: str, timeout: float = 120) -> int:
    url = srv.inference_url + PATHS[protocol].format(m=srv.model_name)
    req = urllib.request.Request(url, data=body, method="POST", headers={"Content-Type": ctype, **srv.headers()})
    try:
        with urllib.request.urlopen(req, timeout=timeout) as resp:
            resp.read()
            return resp.status
    except urllib.error.HTTPError as exc:
        exc.read()
        return exc.code
    except (urllib.error.URLError, ConnectionError, TimeoutError):
        return 0


def worker(srv) -> tuple[list[int], dict]:
    """(worker pids, {pid: (VmRSS MB, VmHWM MB)})."""
    req = urllib.request.Request(f"{srv.management_url}/models/{srv.model_name}", headers=srv.headers("management"))
    with urllib.request.urlopen(req, timeout=10) as resp:
        pids = sorted(w["pid"] for entry in json.loads(resp.read()) for w in entry["workers"])
    mem = {}
    for pid in pids:
        status = dict(line.split(":", 1) for line in Path(f"/proc/{pid}/status").read_text().splitlines() if ":" in line)
        mem[pid] = tuple(round(int(status[k].split()[0]) / 1024) for k in ("VmRSS", "VmHWM"))
    return pids, mem


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--model", type=Path, required=True)
    parser.add_argument("--work", type=Path, default=Path("runs/reliability"))
    parser.add_argument("--seconds", type=float, default=120)
    args = parser.parse_args()

    from platepipe.components.archive import archive
    from platepipe.pipeline.config import load_config
    from platepipe.components import local_server as server

    cfg = load_config().serving
    layout = args.work / "layout"
    if not (layout / "model-store").is_dir():
        archive(args.model, layout, cfg)
    ports = [server.free_port() for _ in range(3)]
    srv = server.start(layout, inference_port=ports[0], management_port=ports[1], metrics_port=ports[2], timeout=600)
    results: dict = {"model": str(args.model), "limits": {k: getattr(cfg, k) for k in (
        "max_images_per_request", "max_request_pixels", "max_request_decoded_mb", "max_request_size_mb")}}
    try:
        goods = [photo(1280, 720, s) for s in range(3)]
        bad = corpus(goods[0])
        table = {}
        for kind, protocol, body, ctype in bad:
            table.setdefault(kind, {})[protocol] = send(srv, protocol, body, ctype)
        results["corpus"] = table
        print(f"\n## Bad-input corpus: {len(bad)} requests, {len(table)} kinds\n")
        print("| kind | original | raw | v1 | v2 | any |\n|---|---|---|---|---|---|")
        for kind, row in table.items():
            print(f"| {kind} | " + " | ".join(str(row.get(p, "")) for p in ("original", "raw", "v1", "v2", "any")) + " |")

        pids_before, mem_before = worker(srv)
        stop = time.monotonic() + args.seconds
        counts, lock = Counter(), threading.Lock()

        def client(seed: int) -> None:
            rng = random.Random(seed)
            while time.monotonic() < stop:
                if rng.random() < 0.2:
                    kind, protocol, body, ctype = rng.choice(bad)
                    code = send(srv, protocol, body, ctype)
                    key = "bad 4xx" if 400 <= code < 500 else f"bad answered {code}"
                else:
                    protocol = rng.choice(["original", "v1", "v2"])
                    n = 1 if protocol == "original" else rng.randint(1, 3)
                    _, body = wrap(protocol, [b64(g) for g in rng.sample(goods, n)])
                    code = send(srv, protocol, body, "application/json")
                    key = "valid 200" if code == 200 else f"valid FAILED {code}"
                with lock:
                    counts[key] += 1

        print(f"\n## Load: 4 clients for {args.seconds:g} s, 20% bad requests\n", flush=True)
        with ThreadPoolExecutor(4) as pool:
            list(pool.map(client, range(4)))
        pids_after, mem_after = worker(srv)
        results["load"] = {"seconds": args.seconds, "counts": dict(counts), "worker_restarts": int(pids_before != pids_after),
                           "memory_before_mb": mem_before, "memory_after_mb": mem_after}
        for key, n in sorted(counts.items()):
            print(f"- {key}: {n}")
        print(f"- worker pids {pids_before} -> {pids_after}; RSS/peak MB {mem_before} -> {mem_after}")

        # the worst request the limits allow: flat-colour PNGs (a few KB each, so the body is small) holding as
        # many pixels as the pixel and decoded-memory budgets let through, in as many images as allowed
        from platepipe.serving.images import decoded_bytes
        n = cfg.max_images_per_request
        per_pixel = decoded_bytes(1, 1, "RGB")
        side = int((min(cfg.max_request_pixels, cfg.max_request_decoded_mb * 2**20 // per_pixel) / n) ** 0.5)
        flat = flat_png(side)
        _, body = wrap("v1", [b64(flat)] * n)
        _, before = worker(srv)
        started = time.perf_counter()
        code = send(srv, "v1", body, "application/json", 600)
        took = time.perf_counter() - started
        _, after = worker(srv)
        over = send(srv, "v1", wrap("v1", [b64(flat_png(side + 64))] * n)[1], "application/json", 600)
        results["worst_allowed"] = {"images": n, "side": side, "pixels": n * side * side, "body_bytes": len(body),
                                    "code": code, "seconds": round(took, 1), "just_over_code": over,
                                    "memory_before_mb": before, "memory_after_mb": after}
        print(f"\n## The worst allowed request: {n} flat PNGs of {side}x{side} ({n * side * side / 1e6:.1f} Mpx, "
              f"{len(body) / 1024:.0f} KB of JSON): {code} in {took:.1f} s; worker RSS/peak MB {before} -> {after}; "
              f"the same just over the budget: {over}")
    finally:
        server.stop(layout)
    args.work.mkdir(parents=True, exist_ok=True)
    (args.work / "reliability.json").write_text(json.dumps(results, indent=2, default=str))


if __name__ == "__main__":
    main()
