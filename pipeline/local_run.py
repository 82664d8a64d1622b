"""`platepipe run --local`: the same pipeline, through kfp.local, on this machine.

fake-gcs-server stands in for the bucket, the deploy step serves the uploaded layout with a local TorchServe
(downloaded from the bucket the way KServe's storage initializer does) and the smoke test posts to it.
kfp.local's own log goes to RUN/kfp.log; the terminal gets a live step list (with each step's progress
lines) and a summary. Nothing is left running unless --keep-serving.
"""

from __future__ import annotations

import dataclasses
import io
import json
import os
import re
import sys
import time
import warnings
from dataclasses import dataclass
from datetime import datetime
from pathlib import Path

from platepipe.pipeline.config import Config, dump_config
from platepipe.pipeline.pipeline import STEP_NAMES

ANSI = re.compile(r"\x1b\[[0-9;]*m")
START = re.compile(r"Executing task '?([\w-]+)'?")
END = re.compile(r"Task '?([\w-]+)'? finished with status (\w+)")
# library chatter that says nothing to the person running the pipeline (it stays in RUN/kfp.log)
NOISE = re.compile(r"FutureWarning|UserWarning|warnings\.warn|torch\.cuda\.amp|_VF\.meshgrid|^\s*$|\[KFP Executor|"
                   r" - mmengine - (INFO|WARNING) - |^\s*(loading annotations into memory|Done \(t=|creating index|"
                   r"index created|Loading and preparing results|DONE \(t=|Running per image evaluation|Evaluate annotation|"
                   r"Accumulating evaluation results|Average (Precision|Recall) +\(A[PR]\) @)")
# (pycocotools' own lines: the ProgressHook prints each validation's figures on one line instead)
SUMMARY_DIR = "steps"  # RUN/steps/<task>.json: what each step reports, for the summary


@dataclass
class StepLine:
    name: str
    started: float
    seconds: float = 0.0
    status: str = "running"


KFP_INDENT = "    "


class StepTracker(io.TextIOBase):
    """Stands in for stdout while kfp.local runs: keeps its whole log in a file and shows a step list."""

    def __init__(self, log_path: Path, out=None):
        self.log = open(log_path, "a", encoding="utf-8")
        self.out = out or sys.__stdout__
        self.steps: list[StepLine] = []
        self._partial = ""
        self._streaming = False  # inside a step's own output
        self._in_json = False    # inside the executor input kfp prints at a step's start

    def write(self, text: str) -> int:
        self.log.write(text)
        self._partial += text
        *lines, self._partial = self._partial.split("\n")
        for line in lines:
            self._line(ANSI.sub("", line))
        return len(text)

    def flush(self) -> None:
        self.log.flush()
        self.out.flush()

    def _line(self, line: str) -> None:
        if m := START.search(line):
            self.steps.append(StepLine(STEP_NAMES.get(m.group(1), m.group(1)), time.monotonic()))
            self.out.write(f"[{len(self.steps)}] {self.steps[-1].name} ...\n")
        elif (m := END.search(line)) and self.steps:
            self._streaming = False
            step = self.steps[-1]
            step.seconds, step.status = time.monotonic() - step.started, m.group(2).lower()
            mark = "ok" if step.status == "success" else "FAILED"
            self.out.write(f"[{len(self.steps)}] {step.name} {mark} in {step.seconds:.1f} s\n")
        elif "Streamed logs:" in line:
            self._streaming = True
        elif "Got executor_input:" in line:
            self._in_json = True
        elif self._in_json:
            self._in_json = line != "    }"
        elif self._streaming and not NOISE.search(line):
            # kfp.local indents a step's lines by 4; keep the step's own indentation (tables)
            self.out.write(f"      {line.removeprefix(KFP_INDENT).rstrip()}\n")
        self.out.flush()

    def close(self) -> None:
        self.log.close()


def preflight() -> None:
    """Fail before anything runs when the set-up cannot carry the whole pipeline."""
    from platepipe.pipeline import doctor

    results = doctor.run_checks()
    missing = [c for c in results if not c.ok]
    if missing:
        raise RuntimeError("the set-up is incomplete for a local run:\n" + doctor.report(missing) +
                           "\nrun `make setup` (and install Java 17 for TorchServe)")


def run_local(cfg: Config, out: str | None = None, keep_serving: bool = False, force_promotion: bool = False,
              echo=print) -> int:
    import kfp.local

    from platepipe.pipeline import tasks
    from platepipe.pipeline.fake_gcs import FakeGcs
    from platepipe.pipeline.pipeline import build_pipeline

    preflight()
    run_dir = Path(out or Path("runs") / datetime.now().strftime("%Y%m%d-%H%M%S")).resolve()
    if run_dir.exists() and any(run_dir.iterdir()):
        raise FileExistsError(f"{run_dir} exists and is not empty: choose a new --out folder")
    run_dir.mkdir(parents=True, exist_ok=True)
    (run_dir / "config.yaml").write_text(dump_config(cfg))
    echo(f"platepipe local run in {run_dir} (kfp.local; its full log: {run_dir / 'kfp.log'})")
    started = time.monotonic()
    saved_env = {k: os.environ.get(k) for k in ("STORAGE_EMULATOR_HOST", tasks.LOCAL_DIR_ENV, tasks.WORK_DIR_ENV,
                                                 "PATH", "TQDM_MININTERVAL", "PYTHONUNBUFFERED")}
    tracker = StepTracker(run_dir / "kfp.log")
    ok = False
    # the bucket is fake-gcs-server's, under RUN/gcs
    cfg = dataclasses.replace(cfg, gcs=dataclasses.replace(cfg.gcs, bucket=cfg.gcs.bucket or "platepipe-local"))
    with FakeGcs(root=run_dir / "gcs") as gcs:
        try:
            os.environ["STORAGE_EMULATOR_HOST"] = gcs.url
            from platepipe.components.gcs import client
            client().create_bucket(cfg.gcs.bucket)
            os.environ[tasks.LOCAL_DIR_ENV] = str(run_dir)
            os.environ[tasks.WORK_DIR_ENV] = str(run_dir / "work")  # checkpoints and training logs stay here
            # steps' progress bars reach us through a pipe, a line per update: one every 10 s is plenty
            os.environ["TQDM_MININTERVAL"] = "10"
            os.environ["PYTHONUNBUFFERED"] = "1"  # and their lines as they are printed, not a pipe buffer later
            # kfp.local runs each step with this Python; tools the steps call sit beside it
            os.environ["PATH"] = str(Path(sys.executable).parent) + os.pathsep + os.environ.get("PATH", "")
            kfp.local.init(runner=kfp.local.SubprocessRunner(use_venv=False), pipeline_root=str(run_dir / "kfp"),
                           raise_on_error=False)
            pipeline_fn = build_pipeline(cfg)
            # kfp.local says that cluster settings (image, GPU, display names) do not apply here: we know
            warnings.filterwarnings("ignore", module=r"kfp\.local\..*")
            sys.stdout = tracker
            try:
                pipeline_fn(config=dump_config(cfg), deploy_target="local", force_promotion=force_promotion)
            except KeyboardInterrupt:
                stop_children()  # the running step (kfp.local waits for it, and it would train on)
                raise
            finally:
                sys.stdout = sys.__stdout__
                tracker.close()
            ok = bool(tracker.steps) and all(s.status == "success" for s in tracker.steps)
        finally:
            for key, value in saved_env.items():
                if value is None:
                    os.environ.pop(key, None)
                else:
                    os.environ[key] = value
            if not keep_serving:
                tasks.stop_local_serving(run_dir)
    summary(run_dir, tracker.steps, time.monotonic() - started, ok, keep_serving, echo)
    return 0 if ok else 1


def descendants(pid: int) -> list[int]:
    """The process ids of pid's children and theirs, from /proc (empty where there is none)."""
    found = []
    for task in Path(f"/proc/{pid}/task").glob("*"):
        try:
            found += [int(c) for c in (task / "children").read_text().split()]
        except OSError:
            pass
    return found + [g for c in found for g in descendants(c)]


def cmdline(pid: int) -> bytes:
    """pid's command line as /proc holds it (empty once the process is gone)."""
    try:
        return Path(f"/proc/{pid}/cmdline").read_bytes()
    except OSError:
        return b""


def running(pid: int) -> bool:
    """Whether pid is a live process (not gone, not a zombie waiting to be reaped)."""
    try:
        return Path(f"/proc/{pid}/stat").read_text().rsplit(") ", 1)[-1][0] != "Z"
    except OSError:
        return False


def stop_children(timeout: float = 10.0) -> None:
    """Terminate this process's child processes and theirs (then kill what is left after timeout)."""
    import signal

    pids = descendants(os.getpid())
    for sig in (signal.SIGTERM, signal.SIGKILL):
        for pid in pids:
            try:
                os.kill(pid, sig)
            except ProcessLookupError:
                pass
        deadline = time.monotonic() + timeout
        while True:
            for pid in pids:  # reap our own children so they do not linger as zombies
                try:
                    os.waitpid(pid, os.WNOHANG)
                except ChildProcessError:
                    pass
            if time.monotonic() >= deadline or not any(running(pid) for pid in pids):
                break
            time.sleep(0.1)


def summary(run_dir: Path, steps: list[StepLine], seconds: float, ok: bool, keep_serving: bool, echo) -> None:
    reports = {}
    for f in sorted((run_dir / SUMMARY_DIR).glob("*.json")):
        reports[f.stem] = json.loads(f.read_text())
    (run_dir / "summary.json").write_text(json.dumps({
        "passed": ok, "minutes": round(seconds / 60, 2),
        "steps": [{"name": st.name, "status": st.status, "seconds": round(st.seconds, 1)} for st in steps],
        "reports": reports}, indent=2, default=str))
    echo("\nsummary")
    width = max([15, *(len(step.name) for step in steps)])
    for i, step in enumerate(steps, 1):
        echo(f"  {i:>2}. {step.name:<{width}} {step.status:<8} {step.seconds:7.1f} s")
    if "evaluate" in reports:
        m = reports["evaluate"]
        echo(f"  metrics: EIR {m['eir']:.4f} (gate {m['min_eir']} on {m.get('gate_set', 'test')}), "
             f"mAP {m.get('bbox_mAP')}, char accuracy {m.get('char_accuracy')}, "
             f"precision {m.get('plate_precision')}, recall {m.get('plate_recall')}")
        from platepipe.components.evaluate import set_lines
        for line in set_lines(m):
            echo(f"    {line}")
    for key, label in (("compare", "against the serving model"), ("upload", "uploaded to"), ("deploy", "endpoint"),
                       ("smoke-test", "smoke test")):
        if key in reports:
            echo(f"  {label}: {reports[key].get('line', '')}")
    for key, label in (("data", "data preview"), ("evaluate", "evaluation report"),
                       ("compare", "comparison report"), ("export", "model"), ("smoke-test", "smoke report")):
        if reports.get(key, {}).get("artifact"):
            echo(f"  {label}: {reports[key]['artifact']}")
    echo(f"  run folder: {run_dir} (kfp/: every step's artifacts; {SUMMARY_DIR}/: what each step reported)")
    if keep_serving and "deploy" in reports:
        echo(f"  still serving; stop it with: platepipe serve --stop {run_dir / 'serving'}")
    echo(f"  {'passed' if ok else 'FAILED'} in {seconds / 60:.1f} min")
