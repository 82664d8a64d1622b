"""Train step: both stages of the plate reader with MMEngine's runner, then export pipeline.pth.

    OUT/detector/        runner work dir of stage 1 (checkpoints, logs, best_*.pth)
    OUT/negatives.json   what the trained detector takes for plates in training images where there are none
    OUT/reader/          runner work dir of stage 2 (plate crops, and those negatives to read as nothing)
    OUT/pipeline.pth

Each stage validates at its end and every `val_interval` iterations before it, over the last tenth of its schedule
(VAL_FROM; detector: COCO bbox mAP; reader: EIR on plate crops; earlier validations pick nothing and cost time),
keeps the best checkpoint, and resumes from its last checkpoint when run again on the same OUT.
A finished stage is not trained again.

On a CPU the two stages train at once, each in its own process on half the cores (train.parallel): one
training process gains little from a second core, two of them together do more. Both train for the whole time
budget; the detector mines the negatives with its weights at MINE_AT of its schedule, and the
reader takes them up as soon as they are written. On a GPU they train one after the other.
"""

from __future__ import annotations

import dataclasses
import json
import logging
import math
import os
import subprocess
import sys
import threading
import time
from pathlib import Path

from platepipe.components.export import checkpoint_weights, export, trusted_checkpoints
from platepipe.configs.model import PRESETS, stage_config
from platepipe.pipeline.config import ModelConfig, TrainConfig
from platepipe.serving.labels import PLATE_TYPES

log = logging.getLogger("platepipe.components.train")  # also when run as __main__ (the detector's process)
STAGES = ("detector", "reader")
BEST_METRIC = {"detector": "coco/bbox_mAP", "reader": "plate/eir"}
DETECTOR_SHARE = 0.4  # of train.time_budget_min; the reader has what the detector and the mining leave
# trained at once: the detector mines the reader's negatives with its weights at this fraction of its schedule
MINE_AT = 0.6
# the time budget counts from train()'s start: each stage ends this many seconds before it runs out, for the export
WRAP_UP_S = 5
VAL_FROM = 0.9  # of a stage's schedule: where validations begin (at the end, and every val_interval before it)
# the reader's negatives: detections the model would read (model.plate_score and up) that touch no labelled plate,
# in up to NEGATIVE_IMAGES training images; the surest NEGATIVE_SHARE x the plate count are kept
NEGATIVE_IMAGES, NEGATIVE_SHARE = 500, 0.25


def cpu_cores(cgroup: Path = Path("/sys/fs/cgroup")) -> int:
    """The cores this process may use: those it may run on (its affinity, as a container's CPU set limits it),
    at most its CPU quota rounded up (a Kubernetes CPU limit, on a node with many more cores)."""
    try:
        cores = len(os.sched_getaffinity(0))
    except AttributeError:  # not Linux
        cores = os.cpu_count() or 1
    quota = cpu_quota(cgroup)
    return max(1, min(cores, math.ceil(quota))) if quota else cores


def cpu_quota(cgroup: Path) -> float | None:
    """CPUs' worth of time the cgroup may use (cgroup v2 cpu.max, else v1 cpu.cfs_quota_us), None if unlimited."""
    try:
        quota, period = (cgroup / "cpu.max").read_text().split()[:2]
    except (OSError, ValueError):
        try:
            quota = (cgroup / "cpu" / "cpu.cfs_quota_us").read_text().strip()
            period = (cgroup / "cpu" / "cpu.cfs_period_us").read_text().strip()
        except OSError:
            return None
    try:
        return int(quota) / int(period) if int(quota) > 0 and int(period) > 0 else None
    except ValueError:  # "max": no limit
        return None


def parallel(spec: TrainConfig) -> bool:
    """Train the two stages at once? "on"/"off" as said; "auto": on a CPU (no GPU to train on) with 2+ cores."""
    if spec.parallel in ("on", "off"):
        return spec.parallel == "on"
    import torch

    return not torch.cuda.is_available() and cpu_cores() >= 2


def bf16(precision: str) -> bool:
    """Whether to train under bfloat16 autocast: always for "bf16", never for "fp32"; for "auto" where the
    device computes bfloat16 natively (serving.reader.native_bf16): elsewhere it is emulated and slower."""
    import torch

    from platepipe.serving.reader import native_bf16

    if precision in ("bf16", "fp32"):
        return precision == "bf16"
    return native_bf16("cuda" if torch.cuda.is_available() else "cpu")


def check_data(data_dir: Path) -> None:
    missing = [n for n in ("train.json", "val.json") if not (data_dir / n).is_file()]
    if missing:
        raise FileNotFoundError(f"{data_dir} is not a platepipe data set (missing {', '.join(missing)}): "
                                f"make one with `platepipe data --out {data_dir}`")


def runner_config(stage: str, cfg: dict, data_dir: Path, work_dir: Path, model: ModelConfig, spec: TrainConfig,
                  negatives: Path | None = None, budget_min: float | None = None,
                  deadline: float | None = None) -> dict:
    """The MMEngine runner settings for one stage. negatives: the reader's negatives file; budget_min: the
    stage's minutes (None: no limit); deadline: the time.time() by which it ends, where sooner (TimeBudgetHook)."""
    data_root = str(data_dir) + "/"
    classes = tuple(cfg["classes"])
    if stage == "detector":
        dataset = dict(type="CocoDataset", data_root=data_root, data_prefix=dict(img=""), metainfo=dict(classes=classes),
                       filter_cfg=dict(filter_empty_gt=False, min_size=2))
        evaluator = dict(type="CocoMetric", ann_file=str(data_dir / "val.json"), metric="bbox")
    else:
        dataset = dict(type="PlateCropDataset", data_root=data_root, data_prefix=dict(img=data_root),
                       metainfo=dict(classes=classes))
        evaluator = dict(type="PlateReadMetric", score_threshold=model.char_score)
    train_set = dict(dataset, ann_file="train.json", pipeline=cfg["train_pipeline"],
                     **({"negatives": str(negatives), "negative_share": NEGATIVE_SHARE} if negatives else {}))
    val_set = dict(dataset, ann_file="val.json", pipeline=cfg["test_pipeline"], test_mode=True)
    iters, lr = cfg["max_iters"], cfg["lr"]
    val_interval = min(spec.val_interval, iters)
    warmup = max(1, min(100, iters // 10))
    workers = cfg["workers"] if spec.workers is None else spec.workers
    loader = dict(num_workers=workers, persistent_workers=workers > 0)
    return dict(
        model=cfg["model"],
        work_dir=str(work_dir),
        train_dataloader=dict(batch_size=cfg["batch_size"], sampler=dict(type="InfiniteSampler", shuffle=True),
                              dataset=train_set, **loader),
        val_dataloader=dict(batch_size=max(1, cfg["batch_size"] // 2), sampler=dict(type="DefaultSampler", shuffle=False),
                            dataset=val_set, **loader),
        val_evaluator=evaluator,
        train_cfg=dict(type="EndAlignedTrainLoop", max_iters=iters, val_interval=val_interval,
                       val_begin=max(1, round(VAL_FROM * iters))),
        val_cfg=dict(type="ValLoop"),
        optim_wrapper=dict(type="BF16OptimWrapper" if bf16(spec.precision) else "OptimWrapper",
                           constructor="GroupedOptimWrapperConstructor",
                           # fused: one kernel for all the weights (CPU and GPU) instead of a loop over them
                           optimizer=dict(type="AdamW", lr=lr, weight_decay=0.05, fused=True),
                           paramwise_cfg=dict(norm_decay_mult=0, bias_decay_mult=0, bypass_duplicate=True),
                           clip_grad=dict(max_norm=10.0)),
        param_scheduler=[
            dict(type="LinearLR", start_factor=0.01, by_epoch=False, begin=0, end=warmup),
            dict(type="CosineAnnealingLR", eta_min=lr * 0.05, begin=iters // 2, end=iters, T_max=iters - iters // 2,
                 by_epoch=False),
        ],
        default_hooks=dict(
            timer=dict(type="IterTimerHook"),
            logger=dict(type="LoggerHook", interval=50, log_metric_by_epoch=False),
            param_scheduler=dict(type="ParamSchedulerHook"),
            checkpoint=dict(type="CheckpointHook", by_epoch=False, interval=val_interval, save_best=BEST_METRIC[stage],
                            rule="greater", max_keep_ckpts=1, save_last=True),
            sampler_seed=dict(type="DistSamplerSeedHook"),
        ),
        custom_hooks=[dict(type="TimeBudgetHook", minutes=budget_min, deadline=deadline),
                      dict(type="ProgressHook", stage=stage, interval=25)]
        + ([ema_hook(iters)] if cfg.get("ema") else []),
        log_processor=dict(by_epoch=False),
        default_scope="mmdet",
        randomness=dict(seed=spec.seed),
        resume=spec.resume,
        log_level="WARNING",
    )


def ema_hook(iters: int) -> dict:
    """An exponential moving average of the weights, used for validation and saved as the checkpoint's weights
    (components.mm.optim.ema_momentum: at the end it averages over the last sixth of the schedule)."""
    from platepipe.components.mm.optim import ema_momentum

    momentum, gamma = ema_momentum(iters)
    return dict(type="EMAHook", ema_type="FastExpMomentumEMA", momentum=momentum, gamma=gamma, update_buffers=True,
                priority=49)


def train_stage(stage: str, data_dir: Path, out_dir: Path, model: ModelConfig, spec: TrainConfig,
                negatives: Path | None = None,
                budget_min: float | None = None, hooks: tuple = (), deadline: float | None = None
                ) -> tuple[dict, Path, dict]:
    """Train one stage; return its model config, its best checkpoint and its best validation metrics.
    negatives: the reader's negatives file (it may appear during the training); hooks: more Hook objects;
    budget_min, deadline: see runner_config."""
    import platepipe.components.mm  # noqa: F401  registers the project's dataset, transform, metric and hooks
    from mmdet.utils import register_all_modules
    from mmengine.config import Config
    from mmengine.runner import Runner

    register_all_modules(init_default_scope=False)
    cfg = _stage_cfg(stage, model, spec)
    work_dir = out_dir / stage
    work_dir.mkdir(parents=True, exist_ok=True)
    runner_cfg = runner_config(stage, cfg, data_dir, work_dir, model, spec, negatives=negatives, budget_min=budget_min,
                               deadline=deadline)
    if not spec.resume or not (work_dir / "last_checkpoint").exists():
        runner_cfg["resume"] = False
    precision = "bf16" if bf16(spec.precision) else "fp32"
    log.info(f"training {stage} ({model.preset}: {cfg['max_iters']} iterations, batch {cfg['batch_size']}, "
             f"{precision})")
    with trusted_checkpoints():
        runner = Runner.from_cfg(Config(runner_cfg))
        fast_layers(runner.model)
        for hook in hooks:
            runner.register_hook(hook)
        logging.getLogger("mmengine").setLevel(logging.WARNING)
        runner.train()
    best = best_checkpoint(work_dir)
    metrics = _best_metrics(work_dir, BEST_METRIC[stage])
    return cfg, best, metrics


def fast_layers(model) -> None:
    """Before the optimiser, the weight average and a resumed checkpoint take the model up: channels-last weights
    (oneDNN's convolutions run in that layout) and the depthwise layers in float32 under bfloat16 autocast
    (serving.layers). benchmarks/train_step.py measures a step."""
    import torch

    from platepipe.serving.layers import depthwise_in_float32

    depthwise_in_float32(model)
    model.to(memory_format=torch.channels_last)


def best_checkpoint(work_dir: Path) -> Path:
    best = sorted(work_dir.glob("best_*.pth"))
    if best:
        return best[-1]
    last = work_dir / "last_checkpoint"
    if last.exists():
        return Path(last.read_text().strip())
    raise FileNotFoundError(f"no checkpoint in {work_dir}: training did not save one")


def _best_metrics(work_dir: Path, key: str) -> dict:
    """The validation record with the best value of key, from the runner's scalars.json logs."""
    best: dict = {}
    for log in work_dir.glob("*/vis_data/scalars.json"):
        for line in log.read_text().splitlines():
            rec = json.loads(line)
            if key in rec and rec[key] >= best.get(key, -1):
                best = rec
    return best


def train(data_dir: str | Path, out_dir: str | Path, model: ModelConfig, spec: TrainConfig) -> Path:
    """Train both stages (the `model` and `train` sections of the configuration) and export OUT/pipeline.pth,
    which carries the model's thresholds; return its path."""

    data_dir, out_dir = Path(data_dir), Path(out_dir)
    check_data(data_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    negatives = out_dir / "negatives.json"
    if spec.time_budget_min is None:  # the preset's (quick: what fits the local run into 15 minutes)
        spec = dataclasses.replace(spec, time_budget_min=PRESETS[model.preset].get("time_budget_min"))
    deadline = time.time() + spec.time_budget_min * 60 - WRAP_UP_S if spec.time_budget_min else None
    if spec.time_budget_min:
        log.info(f"training for at most {spec.time_budget_min:g} minutes (train.time_budget_min)")
    if parallel(spec):
        stages = _train_at_once(data_dir, out_dir, model, spec, negatives, deadline)
    else:
        total, start = spec.time_budget_min, time.monotonic()
        stages = {"detector": train_stage("detector", data_dir, out_dir, model, spec,
                                          budget_min=total * DETECTOR_SHARE if total else None)}
        det_cfg, det_ckpt, _ = stages["detector"]
        mine_negatives(det_cfg, det_ckpt, data_dir, negatives, model.plate_score, seed=spec.seed)
        left = max(total * (1 - DETECTOR_SHARE) / 2, total - (time.monotonic() - start) / 60) if total else None
        stages["reader"] = train_stage("reader", data_dir, out_dir, model, spec, negatives=negatives, budget_min=left,
                                       deadline=deadline)
    metrics = {stage: {k: v for k, v in m.items() if "/" in k} for stage, (_, _, m) in stages.items()}
    return export(out_dir / "pipeline.pth",
                  {stage: (cfg, ckpt) for stage, (cfg, ckpt, _) in stages.items()},
                  metrics=metrics, data_dir=data_dir, thresholds=model.thresholds,
                  train_spec={"preset": model.preset, **dataclasses.asdict(spec)})


def _train_at_once(data_dir: Path, out_dir: Path, model: ModelConfig, spec: TrainConfig, negatives: Path,
                   deadline: float | None) -> dict:
    """The detector (and its mining) in a child process on half the cores, the reader here on the others (and
    on every core once the child is done). Data loading stays in each training process unless
    train.workers says otherwise (a loader process would take the other stage's core)."""
    import torch

    from platepipe.components.mm.stages import DetectorWatchHook

    cores = cpu_cores()
    det_threads = max(1, cores // 2)
    spec = dataclasses.replace(spec, workers=0 if spec.workers is None else spec.workers)
    total = spec.time_budget_min
    job = {"data_dir": str(data_dir), "out_dir": str(out_dir), "model": dataclasses.asdict(model),
           "train": dataclasses.asdict(spec), "budget_min": total,
           "deadline": deadline, "threads": det_threads, "parent": os.getpid()}
    env = dict(os.environ, OMP_NUM_THREADS=str(det_threads), PYTHONUNBUFFERED="1")
    log.info(f"training both stages at once: the detector on {det_threads} of {cores} cores, the reader on the rest")
    child = subprocess.Popen([sys.executable, "-m", "platepipe.components.train", json.dumps(job)], env=env, text=True,
                             stdout=subprocess.PIPE, stderr=subprocess.PIPE, bufsize=1)
    relays = [_relay(child.stdout, lambda: sys.stdout), _relay(child.stderr, lambda: sys.stderr)]
    before = torch.get_num_threads()
    try:
        torch.set_num_threads(max(1, cores - det_threads))
        reader = train_stage("reader", data_dir, out_dir, model, spec, negatives=negatives, budget_min=total,
                             hooks=(DetectorWatchHook(child, cores),), deadline=deadline)
        if child.poll() is None:
            log.info("  reader done: waiting for the detector")
        if child.wait():
            raise RuntimeError(f"training the detector failed (exit code {child.returncode}; its output is above)")
    finally:
        torch.set_num_threads(before)
        if child.poll() is None:  # the reader failed or was stopped: stop the detector too
            child.terminate()
            try:
                child.wait(30)
            except subprocess.TimeoutExpired:
                child.kill()
                child.wait()
        for relay in relays:
            relay.join(5)
    work_dir = out_dir / "detector"
    return {"detector": (_stage_cfg("detector", model, spec), best_checkpoint(work_dir),
                         _best_metrics(work_dir, BEST_METRIC["detector"])), "reader": reader}


def _stage_cfg(stage: str, model: ModelConfig, spec: TrainConfig) -> dict:
    return stage_config(stage, model.preset, max_iters=spec.max_iters, batch_size=spec.batch_size, lr=spec.lr)


def _relay(stream, target) -> threading.Thread:
    """Pass the child's lines on to this process's stream as they come (target() is looked up for each line:
    whatever sys.stdout is then, as a test's capture)."""
    def run() -> None:
        for line in stream:
            out = target()
            out.write(line)
            out.flush()

    thread = threading.Thread(target=run, daemon=True)
    thread.start()
    return thread


def _detector_job(job: dict) -> None:
    """The child process of _train_at_once: train the detector, mining the negatives on the way (MINE_AT). It
    stops when its parent is gone (killed), so that no training is left behind."""
    import torch

    from platepipe.components.mm.stages import MineNegativesHook

    torch.set_num_threads(job["threads"])
    parent = job["parent"]

    def watch_parent() -> None:
        while os.getppid() == parent:
            time.sleep(1)
        os._exit(1)

    threading.Thread(target=watch_parent, daemon=True).start()
    data_dir, out_dir = Path(job["data_dir"]), Path(job["out_dir"])
    model, spec = ModelConfig(**job["model"]), TrainConfig(**job["train"])
    cfg, negatives = _stage_cfg("detector", model, spec), out_dir / "negatives.json"

    def mine(detector) -> None:
        mine_negatives(cfg, detector, data_dir, negatives, model.plate_score, seed=spec.seed)

    _, ckpt, _ = train_stage("detector", data_dir, out_dir, model, spec, budget_min=job["budget_min"],
                             hooks=(MineNegativesHook(MINE_AT, mine),), deadline=job.get("deadline"))
    mine_negatives(cfg, ckpt, data_dir, negatives, model.plate_score, seed=spec.seed)  # resumed past MINE_AT


def mine_negatives(cfg: dict, weights, data_dir: Path, out_file: Path, plate_score: float, seed: int = 0) -> Path:
    """Run the detector (`weights`: its checkpoint, or the model in training) over training images and write, as
    the reader's negatives, its detections scoring plate_score or more that touch no labelled plate (text, clutter): the reader learns to
    read nothing there, so that a false detection does not become a false plate. Kept from an earlier run on
    the same OUT (resume)."""
    import numpy as np
    import torch

    from platepipe.components.mm.data import read_image
    from platepipe.serving.reader import build_model, infer_size, native_bf16, resize_long, run_model

    if out_file.is_file():
        return out_file
    coco = json.loads((data_dir / "train.json").read_text())
    names = {c["id"]: c["name"] for c in coco["categories"]}
    plates: dict[int, list[list[float]]] = {}
    for a in coco["annotations"]:
        if names[a["category_id"]] in PLATE_TYPES:
            x, y, w, h = a["bbox"]
            plates.setdefault(a["image_id"], []).append([x, y, x + w, y + h])
    images = coco["images"]
    picked = sorted(np.random.default_rng(seed).permutation(len(images))[:NEGATIVE_IMAGES].tolist())
    if isinstance(weights, torch.nn.Module):
        model, training = weights, weights.training
    else:  # on the GPU where there is one: the model's preprocessor moves the images there
        model = build_model("detector", cfg, checkpoint_weights(weights), "cuda" if torch.cuda.is_available() else "cpu")
        training = False
    fast = native_bf16(next(model.parameters()).device)
    start, found = time.monotonic(), []
    log.info(f"mining the reader's negatives: the detector on {len(picked)} training images")
    model.eval()
    try:
        for i in picked:
            image = images[i]
            img = read_image(str(data_dir / image["file_name"]))
            small, scale = resize_long(img, infer_size(cfg))
            pred = run_model(model, [small], [scale], fast)[0]
            for box, score in zip(pred.bboxes.tolist(), pred.scores.tolist()):
                if score >= plate_score and not any(_touch(box, p) for p in plates.get(image["id"], [])):
                    found.append({"file_name": image["file_name"], "height": image["height"], "width": image["width"],
                                  "bbox": [round(v, 1) for v in box], "score": round(score, 3)})
    finally:
        model.train(training)
    keep = int(NEGATIVE_SHARE * sum(len(v) for v in plates.values()))
    found = sorted(found, key=lambda n: -n["score"])[:keep]
    tmp = out_file.with_name(out_file.name + ".partial")
    tmp.write_text(json.dumps(found))
    os.replace(tmp, out_file)
    log.info(f"mined {len(found)} negatives in {time.monotonic() - start:.0f} s")
    return out_file


def _touch(a: list[float], b: list[float]) -> bool:
    """Do boxes (x1, y1, x2, y2) overlap at all?"""
    return a[0] < b[2] and b[0] < a[2] and a[1] < b[3] and b[1] < a[3]


if __name__ == "__main__":  # the detector's process when both stages train at once (_train_at_once)
    from platepipe.components.progress import show

    show()
    _detector_job(json.loads(sys.argv[1]))
