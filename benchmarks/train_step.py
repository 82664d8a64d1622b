"""Seconds per training iteration of one stage, with and without the training's speed-ups, taking turns.

    .venv/bin/python benchmarks/train_step.py --data DIR [--stage reader] [--steps 40] [--blocks 3] [--threads 1]
                                              [--against plain|bf16-depthwise]

DIR is a data set (`platepipe data --out DIR`, or a local run's RUN/kfp/*/data-step/data). Two set-ups of the
quick preset's stage are timed in alternating blocks of STEPS iterations (each block a fresh runner, its first
5 iterations not counted; an iteration runs from one iteration's start to the next: data, step, hooks), so that
a machine whose speed drifts slows both alike:

  plain      contiguous weights, AdamW looping over the weights in mmengine's one group per weight, mmdet's
             ExpMomentumEMA (a call per tensor), every layer under bfloat16 autocast
  platepipe  what components.train does: channels-last weights, fused AdamW over groups of equal settings
             (GroupedOptimWrapperConstructor), FastExpMomentumEMA, depthwise layers in float32 (serving.layers)

--against bf16-depthwise times platepipe against itself with its depthwise layers left to autocast (bfloat16):
that change alone.

The median seconds per iteration of each and their ratio are printed. One thread by default: in the local
run each stage trains on one of the two cores. Training itself (data loading, forward, backward, optimiser,
weight average) is timed; validation and checkpoints are switched off.
"""

from __future__ import annotations

import argparse
import statistics
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

SKIP = 5  # warm-up iterations of each block


def block(stage: str, data: Path, steps: int, setup: str) -> list[float]:
    """The seconds of each iteration of one fresh runner of a set-up (plain, platepipe, bf16-depthwise), after
    SKIP warm-up iterations."""
    import torch
    from mmengine.config import Config
    from mmengine.hooks import Hook
    from mmengine.runner import Runner

    from platepipe.components.train import _stage_cfg, fast_layers, runner_config, trusted_checkpoints

    from platepipe.pipeline.config import settings

    times: list[float] = []

    class Clock(Hook):  # an iteration: from one before_train_iter to the next (data, step, every hook)
        last = None

        def before_train_iter(self, runner, batch_idx, data_batch=None):
            now = time.perf_counter()
            if self.last is not None and batch_idx > SKIP:
                times.append(now - self.last)
            self.last = now

    # workers 0: as in the local run, each stage loads its data in its own process
    spec = settings("model", preset="quick"), settings("train", max_iters=steps + SKIP + 1, resume=False, workers=0)
    cfg = _stage_cfg(stage, *spec)
    with tempfile.TemporaryDirectory() as work:
        rc = runner_config(stage, cfg, data, Path(work), *spec)
        rc["train_cfg"].update(val_interval=10 ** 9, val_begin=10 ** 9)
        rc["default_hooks"]["checkpoint"] = dict(type="CheckpointHook", interval=10 ** 9, save_last=False)
        rc["custom_hooks"] = [h for h in rc["custom_hooks"] if h["type"] == "EMAHook"]
        if setup == "plain":
            rc["optim_wrapper"]["optimizer"]["fused"] = False
            rc["optim_wrapper"].pop("constructor")
            rc["custom_hooks"] = [dict(h, ema_type="ExpMomentumEMA") for h in rc["custom_hooks"]]
        with trusted_checkpoints():
            runner = Runner.from_cfg(Config(rc))
            if setup == "platepipe":
                fast_layers(runner.model)
            elif setup == "bf16-depthwise":
                runner.model.to(memory_format=torch.channels_last)
            runner.register_hook(Clock(), priority="VERY_HIGH")
            runner.train()
    return times


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--data", type=Path, required=True, help="a platepipe data set folder")
    parser.add_argument("--stage", choices=("reader", "detector"), default="reader")
    parser.add_argument("--steps", type=int, default=40, help="timed iterations per block (default 40)")
    parser.add_argument("--blocks", type=int, default=3, help="blocks per set-up (default 3)")
    parser.add_argument("--threads", type=int, default=1, help="torch threads (default 1, as in the local run)")
    parser.add_argument("--against", choices=("plain", "bf16-depthwise"), default="plain",
                        help="the set-up platepipe's is timed against (default plain)")
    args = parser.parse_args()
    if not (args.data / "train.json").exists():
        parser.error(f"{args.data} has no train.json: pass a data set folder (platepipe data --out DIR)")

    import logging

    import torch

    import platepipe.components.mm  # noqa: F401  registers the project's parts
    from mmdet.utils import register_all_modules

    torch.set_num_threads(args.threads)
    register_all_modules(init_default_scope=False)
    logging.getLogger("mmengine").setLevel(logging.WARNING)
    base = args.against
    times: dict[str, list[float]] = {base: [], "platepipe": []}
    for b in range(args.blocks):
        for name in (base, "platepipe") if b % 2 == 0 else ("platepipe", base):
            got = block(args.stage, args.data, args.steps, name)
            times[name] += got
            print(f"block {b + 1}/{args.blocks} {name}: median {statistics.median(got):.4f} s/it", flush=True)
    slow, fast = (statistics.median(times[k]) for k in (base, "platepipe"))
    print(f"{args.stage}, {args.threads} thread(s), {len(times[base])} iterations each: {base} {slow:.4f} s/it, "
          f"platepipe {fast:.4f} s/it, ratio {fast / slow:.3f} ({(1 - fast / slow) * 100:.1f}% less time)")


if __name__ == "__main__":
    main()
