"""`platepipe run --local`: the pipeline's steps on this machine, with a live step list and a summary.

Only the steps built so far run (data, train or fetch + export, evaluate); the rest of the pipeline
(archive, upload, deploy, smoke test) joins as it lands.
"""

from __future__ import annotations

import time
from dataclasses import dataclass, field
from datetime import datetime
from pathlib import Path
from typing import Callable

from pipeline.config import Config, dump_config


@dataclass
class Step:
    name: str
    run: Callable[[], str]  # returns a one-line result
    result: str = ""
    seconds: float = 0.0
    status: str = "pending"
    extra: dict = field(default_factory=dict)


def run_steps(steps: list[Step], echo: Callable[[str], None] = print) -> bool:
    """Run steps in order, printing each as it starts and ends; stop at the first failure."""
    for i, step in enumerate(steps, 1):
        echo(f"[{i}/{len(steps)}] {step.name} ...")
        started = time.monotonic()
        try:
            step.result = step.run()
            step.status = "ok"
        except Exception as exc:
            step.status = "failed"
            step.result = f"{type(exc).__name__}: {exc}"
        step.seconds = time.monotonic() - started
        mark = "ok" if step.status == "ok" else "FAILED"
        echo(f"[{i}/{len(steps)}] {step.name} {mark} in {step.seconds:.1f} s: {step.result}")
        if step.status != "ok":
            for later in steps[i:]:
                later.status = "skipped"
            return False
    return True


def run_local(cfg: Config, out: str | None = None) -> int:
    from components import data

    run_dir = Path(out or Path("runs") / datetime.now().strftime("%Y%m%d-%H%M%S"))
    run_dir.mkdir(parents=True, exist_ok=True)
    (run_dir / "config.yaml").write_text(dump_config(cfg))
    data_dir = run_dir / "data"

    def make_data() -> str:
        summary = data.generate(data_dir, data.DataSpec.from_config(cfg.data))
        return f"{summary['n_images']} images, {summary['plates']} plates -> {data_dir}"

    def make_preview() -> str:
        return str(data.preview(data_dir, run_dir / "data-preview.png"))

    train_dir, eval_dir = run_dir / "train", run_dir / "evaluate"
    metrics: dict = {}

    def make_model() -> str:
        from components import export, train
        if cfg.model.pretrained:
            return f"fetched {export.fetch(cfg.model.pretrained, train_dir)}"
        return f"exported {train.train(data_dir, train_dir, train.TrainSpec.from_config(cfg))}"

    def make_evaluation() -> str:
        from components.evaluate import evaluate
        ev = cfg.evaluate
        metrics.update(evaluate(train_dir / "pipeline.pth", data_dir, eval_dir, score_threshold=ev.score_threshold,
                                iou_threshold=ev.iou_threshold, report_worst=ev.report_worst))
        line = (f"EIR {metrics['eir']:.4f} (gate {ev.min_eir}), mAP {metrics['bbox_mAP']:.4f}, "
                f"report {eval_dir / 'report.html'}")
        if metrics["eir"] < ev.min_eir:
            raise RuntimeError(f"gate failed: {line}")
        return line

    steps = [Step("data", make_data), Step("data preview", make_preview), Step("train", make_model),
             Step("evaluate", make_evaluation)]
    print(f"platepipe local run in {run_dir}")
    ok = run_steps(steps)
    print("\nsummary")
    for step in steps:
        print(f"  {step.name:<14} {step.status:<8} {step.seconds:7.1f} s  {step.result}")
    print(f"  run folder: {run_dir.resolve()}")
    return 0 if ok else 1
