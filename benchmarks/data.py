"""Data step speed: render N synthetic images (640-1280 px) on all cores and report images per minute.

    .venv/bin/python benchmarks/data.py [--n 2000] [--repeats 3]
"""

import argparse
import os
import platform
import shutil
import statistics
import tempfile
import time
from pathlib import Path

from platepipe.components.data import generate

from platepipe.pipeline.config import settings


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--n", type=int, default=2000)
    parser.add_argument("--repeats", type=int, default=3)
    args = parser.parse_args()
    times = []
    for r in range(args.repeats):
        out = Path(tempfile.mkdtemp()) / "set"
        started = time.perf_counter()
        summary = generate(out, settings("data", n_images=args.n, seed=r), progress=False)
        times.append(time.perf_counter() - started)
        shutil.rmtree(out.parent)
        print(f"run {r + 1}: {args.n} images, {summary['plates']} plates in {times[-1]:.1f} s")
    median = statistics.median(times)
    print(f"{platform.processor() or platform.machine()}, {os.cpu_count()} cores: median {median:.1f} s for "
          f"{args.n} images = {median / args.n * 1000:.1f} s per 1,000 images")


if __name__ == "__main__":
    main()
