"""Train step: both stages of the plate reader with MMEngine's runner, then export pipeline.pth.

    OUT/detector/   runner work dir of stage 1 (checkpoints, logs, best_*.pth)
    OUT/reader/     runner work dir of stage 2
    OUT/pipeline.pth

Each stage validates every `val_interval` iterations (detector: COCO bbox mAP; reader: EIR on plate
crops), keeps the best checkpoint, and resumes from its last checkpoint when run again on the same OUT.
A finished stage is not trained again.
"""

from __future__ import annotations

import contextlib
import json
import logging
import os
from dataclasses import dataclass
from pathlib import Path

from configs.model import stage_config

STAGES = ("detector", "reader")
BEST_METRIC = {"detector": "coco/bbox_mAP", "reader": "plate/eir"}
BUDGET_SHARE = {"detector": 0.4, "reader": 0.6}  # of train.time_budget_min


@dataclass(frozen=True)
class TrainSpec:
    preset: str = "quick"
    max_iters: int | None = None      # per stage; None = the preset's
    batch_size: int | None = None
    lr: float | None = None
    val_interval: int = 200
    seed: int = 0
    workers: int | None = None      # data-loading processes per stage; None = the preset's
    resume: bool = True
    time_budget_min: float | None = None

    @classmethod
    def from_config(cls, cfg) -> "TrainSpec":
        t = cfg.train
        return cls(preset=cfg.model.preset, max_iters=t.max_iters, batch_size=t.batch_size, lr=t.lr,
                   val_interval=t.val_interval, seed=t.seed, workers=t.workers, resume=t.resume,
                   time_budget_min=t.time_budget_min)


def check_data(data_dir: Path) -> None:
    missing = [n for n in ("train.json", "val.json") if not (data_dir / n).is_file()]
    if missing:
        raise FileNotFoundError(f"{data_dir} is not a platepipe data set (missing {', '.join(missing)}): "
                                f"make one with `platepipe data --out {data_dir}`")


@contextlib.contextmanager
def _trusted_checkpoints():
    """mmengine's checkpoints hold optimiser state and logs that torch's weights_only loader refuses.
    Resuming reads checkpoints this step wrote itself, so allow full loading while it runs, then restore."""
    old = os.environ.get("TORCH_FORCE_NO_WEIGHTS_ONLY_LOAD")
    os.environ["TORCH_FORCE_NO_WEIGHTS_ONLY_LOAD"] = "1"
    try:
        yield
    finally:
        if old is None:
            os.environ.pop("TORCH_FORCE_NO_WEIGHTS_ONLY_LOAD", None)
        else:
            os.environ["TORCH_FORCE_NO_WEIGHTS_ONLY_LOAD"] = old


def runner_config(stage: str, cfg: dict, data_dir: Path, work_dir: Path, spec: TrainSpec) -> dict:
    """The MMEngine runner settings for one stage."""
    data_root = str(data_dir) + "/"
    classes = tuple(cfg["classes"])
    if stage == "detector":
        dataset = dict(type="CocoDataset", data_root=data_root, data_prefix=dict(img=""), metainfo=dict(classes=classes),
                       filter_cfg=dict(filter_empty_gt=False, min_size=2))
        evaluator = dict(type="CocoMetric", ann_file=str(data_dir / "val.json"), metric="bbox")
    else:
        dataset = dict(type="PlateCropDataset", data_root=data_root, data_prefix=dict(img=data_root),
                       metainfo=dict(classes=classes))
        evaluator = dict(type="PlateReadMetric")
    train_set = dict(dataset, ann_file="train.json", pipeline=cfg["train_pipeline"])
    val_set = dict(dataset, ann_file="val.json", pipeline=cfg["test_pipeline"], test_mode=True)
    iters, lr = cfg["max_iters"], cfg["lr"]
    val_interval = min(spec.val_interval, iters)
    warmup = max(1, min(100, iters // 10))
    budget = spec.time_budget_min * BUDGET_SHARE[stage] if spec.time_budget_min else None
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
        train_cfg=dict(type="IterBasedTrainLoop", max_iters=iters, val_interval=val_interval),
        val_cfg=dict(type="ValLoop"),
        optim_wrapper=dict(type="OptimWrapper", optimizer=dict(type="AdamW", lr=lr, weight_decay=0.05),
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
        custom_hooks=[dict(type="TimeBudgetHook", minutes=budget), dict(type="ProgressHook", stage=stage, interval=25)]
        + ([ema_hook(iters)] if cfg.get("ema") else []),
        log_processor=dict(by_epoch=False),
        default_scope="mmdet",
        randomness=dict(seed=spec.seed),
        resume=spec.resume,
        log_level="WARNING",
    )


def ema_hook(iters: int) -> dict:
    """An exponential moving average of the weights, used for validation and saved as the checkpoint's weights.
    Its momentum starts at 1 (it follows the model while that changes fast) and settles to about
    1 / (iters / 6): at the end it averages over the last sixth of the schedule, the learning-rate decay."""
    return dict(type="EMAHook", ema_type="ExpMomentumEMA", momentum=min(0.5, 6 / iters), gamma=max(1, iters // 10),
                update_buffers=True, priority=49)


def train_stage(stage: str, data_dir: Path, out_dir: Path, spec: TrainSpec) -> tuple[dict, Path, dict]:
    """Train one stage; return its model config, its best checkpoint and its best validation metrics."""
    import components.mm_parts  # noqa: F401  registers the project's dataset, transform, metric and hooks
    from mmdet.utils import register_all_modules
    from mmengine.config import Config
    from mmengine.runner import Runner

    register_all_modules(init_default_scope=False)
    cfg = stage_config(stage, spec.preset, max_iters=spec.max_iters, batch_size=spec.batch_size, lr=spec.lr)
    work_dir = out_dir / stage
    work_dir.mkdir(parents=True, exist_ok=True)
    runner_cfg = runner_config(stage, cfg, data_dir, work_dir, spec)
    if not spec.resume or not (work_dir / "last_checkpoint").exists():
        runner_cfg["resume"] = False
    print(f"training {stage} ({spec.preset}: {cfg['max_iters']} iterations, batch {cfg['batch_size']})", flush=True)
    with _trusted_checkpoints():
        runner = Runner.from_cfg(Config(runner_cfg))
        logging.getLogger("mmengine").setLevel(logging.WARNING)
        runner.train()
    best = best_checkpoint(work_dir)
    metrics = _best_metrics(work_dir, BEST_METRIC[stage])
    return cfg, best, metrics


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


def train(data_dir: str | Path, out_dir: str | Path, spec: TrainSpec) -> Path:
    """Train both stages and export OUT/pipeline.pth; return its path."""
    from components.export import export

    data_dir, out_dir = Path(data_dir), Path(out_dir)
    check_data(data_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    stages = {}
    for stage in STAGES:
        stages[stage] = train_stage(stage, data_dir, out_dir, spec)
    metrics = {stage: {k: v for k, v in m.items() if "/" in k} for stage, (_, _, m) in stages.items()}
    return export(out_dir / "pipeline.pth",
                  {stage: (cfg, ckpt) for stage, (cfg, ckpt, _) in stages.items()},
                  metrics=metrics, data_dir=data_dir, train_spec=spec.__dict__)
