"""Serving speed: real TorchServe against the same model run in-process, on the same images, in one run.

    .venv/bin/python benchmarks/serving_speed.py --model runs/bench/train/pipeline.pth [--work runs/serving-bench]

1. renders a few 1280x720 JPEG photos with plates (synthetic, seed 7);
2. in-process: decode + PlateReader.predict in batches of 4 (TorchServe's batch size here), images/s;
3. archives the model (batchSize 4, one worker), starts TorchServe on loopback and times startup-to-READY;
4. posts one image per request with 1 and 4 concurrent clients through the original API, KServe v1 and v2:
   throughput, p50/p95 latency; the 4-client throughput as a ratio of in-process batched throughput.
Prints a Markdown table and writes WORK/serving.json.
"""

from __future__ import annotations

import argparse
import json
import statistics
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path


def percentile(values: list[float], q: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, int(round(q * (len(ordered) - 1))))]


def in_process(model: Path, jpegs: list[bytes], batch: int, repeats: int) -> float:
    """Images per second: decode + batched inference, the median of `repeats` passes."""
    from platepipe.serving.images import load_image
    from platepipe.serving.reader import PlateReader

    reader = PlateReader.from_file(model)
    reader.predict([load_image(jpegs[0])])  # warm-up
    rates = []
    for _ in range(repeats):
        started = time.perf_counter()
        for i in range(0, len(jpegs), batch):
            reader.predict([load_image(j) for j in jpegs[i:i + batch]])
        rates.append(len(jpegs) / (time.perf_counter() - started))
    return statistics.median(rates)


def load(endpoint, jpegs: list[bytes], clients: int, rounds: int) -> dict:
    from platepipe.components import client

    bodies = [client.body_for(endpoint, [j]) for j in jpegs]
    work = [bodies[i % len(bodies)] for i in range(len(bodies) * rounds)]

    def one(body: bytes) -> float:
        t = time.perf_counter()
        client.post(endpoint, body, timeout=120)
        return (time.perf_counter() - t) * 1000

    client.post(endpoint, bodies[0], timeout=120)  # warm-up
    started = time.perf_counter()
    with ThreadPoolExecutor(clients) as pool:
        latencies = list(pool.map(one, work))
    wall = time.perf_counter() - started
    return {"clients": clients, "requests": len(work), "images_per_s": round(len(work) / wall, 2),
            "p50_ms": round(percentile(latencies, 0.5), 1), "p95_ms": round(percentile(latencies, 0.95), 1)}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--model", required=True, help="pipeline.pth")
    parser.add_argument("--work", default="runs/serving-bench")
    parser.add_argument("--images", type=int, default=16, help="distinct images (16)")
    parser.add_argument("--rounds", type=int, default=3, help="times each image is sent per configuration (3)")
    args = parser.parse_args()
    import cv2

    from platepipe.components.archive import archive
    from platepipe.pipeline.config import settings
    from platepipe.components.data import generate
    from platepipe.components import client, local_server as server

    work = Path(args.work)
    data = work / "photos"
    if not (data / "dataset.json").exists():
        generate(data, settings("data", n_images=args.images, seed=7, min_size=1280, max_size=1280, split_train=0, split_val=0, split_test=1),
                 progress=False)
    jpegs = []
    for f in sorted((data / "images").iterdir())[:args.images]:
        ok, buf = cv2.imencode(".jpg", cv2.resize(cv2.imread(str(f)), (1280, 720)), [cv2.IMWRITE_JPEG_QUALITY, 90])
        jpegs.append(buf.tobytes())

    batch = 4
    results: dict = {"images": len(jpegs), "image_size": "1280x720 JPEG", "batch_size": batch}
    results["in_process_images_per_s"] = round(in_process(Path(args.model), jpegs, batch, repeats=3), 2)
    print(f"in-process batched ({batch}): {results['in_process_images_per_s']} images/s", flush=True)

    layout = work / "layout"
    if not (layout / "config" / "config.properties").exists():
        archive(args.model, layout, settings("serving", batch_size=batch, max_batch_delay_ms=20,
                                                         workers_per_model=1, max_request_size_mb=16))
    ports = [server.free_port() for _ in range(3)]
    started = time.perf_counter()
    srv = server.start(layout, inference_port=ports[0], management_port=ports[1], metrics_port=ports[2],
                       token_auth=False, echo=lambda *a, **k: None)
    results["startup_to_ready_s"] = round(time.perf_counter() - started, 1)
    print(f"TorchServe startup to READY: {results['startup_to_ready_s']} s", flush=True)
    try:
        runs = []
        for protocol in ("original", "v1", "v2"):
            endpoint = client.Endpoint(srv.inference_url, model=srv.model_name, protocol=protocol)
            for clients in (1, 4):
                r = {"protocol": protocol, **load(endpoint, jpegs, clients, args.rounds)}
                r["ratio_to_in_process"] = round(r["images_per_s"] / results["in_process_images_per_s"], 2)
                runs.append(r)
                print(f"  {protocol:8} {clients} client(s): {r['images_per_s']} images/s "
                      f"({r['ratio_to_in_process']}x in-process), p50 {r['p50_ms']} ms, p95 {r['p95_ms']} ms",
                      flush=True)
        results["torchserve"] = runs
    finally:
        server.stop(layout)
    (work / "serving.json").write_text(json.dumps(results, indent=2))
    print("\n| protocol | clients | images/s | x in-process | p50 ms | p95 ms |\n|---|---|---|---|---|---|")
    for r in results["torchserve"]:
        print(f"| {r['protocol']} | {r['clients']} | {r['images_per_s']} | {r['ratio_to_in_process']} | "
              f"{r['p50_ms']} | {r['p95_ms']} |")


if __name__ == "__main__":
    main()
