"""The model: a tiny real training run (MMEngine runner, both stages) that saves, resumes and exports;
pipeline.pth loads with weights_only and predicts the same as the checkpoints it came from; evaluation
on a set with a known answer; predict on good and bad files."""

import json
import os
import subprocess
import sys
from pathlib import Path
from types import SimpleNamespace

import numpy as np
import pytest
import torch

from platepipe.components.data import generate
from platepipe.pipeline.config import settings
from platepipe.components.evaluate import evaluate, truth_plates
from platepipe.components.export import FORMAT, load_pipeline
from platepipe.components.train import best_checkpoint, train
from platepipe.serving.labels import CLASSES
from platepipe.serving.reader import ImageResult, PlateReader
from platepipe.serving.plates import Detection

PLATEPIPE = Path(sys.executable).with_name("platepipe")
TINY = settings("model", preset="tiny"), settings("train", max_iters=4, val_interval=2, workers=0)


@pytest.fixture(scope="module")
def trained(data_dir, tmp_path_factory):
    out = tmp_path_factory.mktemp("model") / "train"
    return out, train(data_dir, out, *TINY)


def test_training_saves_checkpoints_and_exports(trained):
    out, pth = trained
    assert pth == out / "pipeline.pth" and pth.stat().st_size > 10_000
    for stage in ("detector", "reader"):
        assert (out / stage / "last_checkpoint").exists()
        assert best_checkpoint(out / stage).is_file()
    assert not list(out.glob("*.partial"))


def test_training_runs_channels_last_with_a_fused_optimiser(trained):
    """The speed settings of training reach the runner: convolution weights in channels-last layout, AdamW fused."""
    out, _ = trained
    for stage in ("detector", "reader"):
        last = torch.load(Path((out / stage / "last_checkpoint").read_text().strip()), map_location="cpu",
                          weights_only=False)  # our own file, with the optimiser state
        assert last["optimizer"]["param_groups"][0]["fused"] is True
        convs = [v for k, v in last["state_dict"].items() if v.dim() == 4 and v.shape[-1] > 1]
        assert convs and all(v.is_contiguous(memory_format=torch.channels_last) for v in convs)


def test_fast_weight_average_matches_mmdets():
    """FastExpMomentumEMA (one foreach update) averages as mmdet's ExpMomentumEMA does, buffers included, for
    weights in either layout."""
    from mmdet.models.layers import ExpMomentumEMA

    from platepipe.components.mm.optim import FastExpMomentumEMA

    torch.manual_seed(0)
    for layout in (torch.contiguous_format, torch.channels_last):
        model = torch.nn.Sequential(torch.nn.Conv2d(3, 8, 3), torch.nn.BatchNorm2d(8), torch.nn.Conv2d(8, 4, 1))
        model.to(memory_format=layout)
        slow = ExpMomentumEMA(model, momentum=0.01, gamma=5, update_buffers=True)
        fast = FastExpMomentumEMA(model, momentum=0.01, gamma=5, update_buffers=True)
        for _ in range(6):
            with torch.no_grad():
                for p in model.parameters():
                    p.add_(torch.randn_like(p))
            model.train()(torch.randn(2, 3, 9, 9))  # moves BatchNorm's running statistics
            slow.update_parameters(model)
            fast.update_parameters(model)
        for key, value in slow.module.state_dict().items():
            assert torch.allclose(fast.module.state_dict()[key].float(), value.float(), atol=1e-6), key
        assert not torch.allclose(fast.module.state_dict()["0.weight"], model.state_dict()["0.weight"])


def test_the_optimiser_groups_weights_of_equal_settings(data_dir, trained):
    """GroupedOptimWrapperConstructor: every weight in exactly one group, with the settings mmengine's constructor
    gives it alone (no weight decay for norms and biases), in two groups instead of one per weight; a trained
    stage's checkpoint holds those groups; and a step updates the weights exactly as the per-weight groups do."""
    from mmengine.optim import build_optim_wrapper

    import platepipe.components.mm  # noqa: F401
    from platepipe.components.train import _stage_cfg, runner_config
    from mmdet.registry import MODELS
    from mmdet.utils import register_all_modules
    from mmengine.config import ConfigDict

    register_all_modules(init_default_scope=True)
    cfg = _stage_cfg("reader", *TINY)
    optim = runner_config("reader", cfg, data_dir, data_dir / "unused", *TINY)["optim_wrapper"]
    assert optim["constructor"] == "GroupedOptimWrapperConstructor"
    torch.manual_seed(0)
    model = MODELS.build(ConfigDict(cfg["model"]))
    twin = MODELS.build(ConfigDict(cfg["model"]))
    twin.load_state_dict(model.state_dict())
    grouped = build_optim_wrapper(model, ConfigDict(optim))
    plain = build_optim_wrapper(twin, ConfigDict({k: v for k, v in optim.items() if k != "constructor"}))
    groups, singles = grouped.optimizer.param_groups, plain.optimizer.param_groups
    assert len(groups) == 2 and len(singles) == len(list(model.parameters())) > 100
    names = {id(p): n for n, p in model.named_parameters()}
    decay = {names[id(p)]: g["weight_decay"] for g in groups for p in g["params"]}
    assert len(decay) == len(names)  # each weight once
    twin_names = {id(p): n for n, p in twin.named_parameters()}
    assert decay == {twin_names[id(g["params"][0])]: g["weight_decay"] for g in singles}
    assert {decay[n] for n in names.values() if n.endswith(".bias") or ".bn." in n} == {0.0}
    for wrapper, net in ((grouped, model), (plain, twin)):  # one AdamW step on the same gradients
        for p in net.parameters():
            p.grad = torch.ones_like(p) * 0.01
        wrapper.optimizer.step()
    for (n, a), b in zip(model.named_parameters(), twin.parameters()):
        assert torch.equal(a, b), n
    out, _ = trained
    last = torch.load(Path((out / "reader" / "last_checkpoint").read_text().strip()), map_location="cpu",
                      weights_only=False)
    assert len(last["optimizer"]["param_groups"]) == 2


def test_pipeline_file_is_safe_and_self_contained(trained):
    payload = torch.load(trained[1], map_location="cpu", weights_only=True)  # no pickled objects
    assert payload["format"] == FORMAT and payload["classes"] == list(CLASSES)
    for stage in ("detector", "reader"):
        cfg = payload[stage]["config"]
        assert cfg["model"]["type"] == "RTMDet" and cfg["stage"] == stage
        assert all(isinstance(v, torch.Tensor) for v in payload[stage]["state_dict"].values())
    assert payload["data_fingerprint"] and payload["versions"]["mmdet"] == "3.3.0"
    assert payload["plate_format"]["example"] == "38D4831" and payload["train"]["preset"] == "tiny"


def test_resume_continues_where_it_stopped(data_dir, trained, capsys):
    out, _ = trained
    more = settings("model", preset="tiny"), settings("train", max_iters=6, val_interval=2, workers=0)
    train(data_dir, out, *more)
    printed = capsys.readouterr().out
    assert "detector: resumed at iteration 4 of 6" in printed
    assert "reader: resumed at iteration 4 of 6" in printed
    ckpt = Path((out / "reader" / "last_checkpoint").read_text().strip())
    assert ckpt.name == "iter_6.pth"


def test_export_predicts_like_the_checkpoints(trained, data_dir):
    """pipeline.pth rebuilt with weights_only gives the same detections as the runner's own checkpoints."""
    out, pth = trained
    payload = load_pipeline(pth)
    from_checkpoints = dict(payload)
    for stage in ("detector", "reader"):
        name = payload[stage]["checkpoint"]
        state = torch.load(out / stage / name, map_location="cpu", weights_only=False)["state_dict"]
        from_checkpoints[stage] = {**payload[stage], "state_dict": state}
    images = [np.asarray(__import__("cv2").imread(str(p))) for p in sorted((data_dir / "images").iterdir())[:3]]
    a = PlateReader(payload, plate_score=0.0, char_score=0.0, keep_partial=True).predict(images)
    b = PlateReader(from_checkpoints, plate_score=0.0, char_score=0.0, keep_partial=True).predict(images)
    for ra, rb in zip(a, b):
        assert [d.label for d in ra.detections] == [d.label for d in rb.detections]
        assert np.allclose([d.bbox for d in ra.detections], [d.bbox for d in rb.detections], atol=1e-3)


def test_files_from_before_filled_crops_still_read_with_fitted_crops(trained):
    """The presets export crop_fill (the reader was trained on stretched crops); a file without the key was
    trained on crops fitted with their aspect kept, and is read that way."""
    payload = load_pipeline(trained[1])
    assert payload["reader"]["config"]["crop_fill"] is True
    assert PlateReader(payload).crop_fill is True
    old = {**payload, "reader": {**payload["reader"], "config": {k: v for k, v in payload["reader"]["config"].items()
                                                                  if k != "crop_fill"}}}
    assert PlateReader(old).crop_fill is False


def test_bad_model_files_are_clear_errors(tmp_path):
    with pytest.raises(FileNotFoundError, match="model file not found"):
        load_pipeline(tmp_path / "none.pth")
    junk = tmp_path / "junk.pth"
    junk.write_bytes(b"not a torch file")
    with pytest.raises(ValueError, match="not a loadable pipeline.pth"):
        load_pipeline(junk)
    other = tmp_path / "other.pth"
    torch.save({"state_dict": {}}, other)
    with pytest.raises(ValueError, match="not a platepipe pipeline.pth"):
        load_pipeline(other)


class Oracle:
    """Reads every labelled plate right except one, and invents one plate on a plate-free image."""

    def __init__(self, coco: dict, data_dir: Path):
        self.by_name = {im["file_name"]: im["id"] for im in coco["images"]}
        self.truth = truth_plates(coco)
        self.coco, self.data_dir = coco, data_dir
        self.queue = [im["id"] for im in coco["images"]]
        self.spoiled = False

    def predict(self, images):
        out = []
        for _ in images:
            image_id = self.queue.pop(0)
            plates = []
            for t in self.truth[image_id]:
                text = t["text"]
                if not self.spoiled:
                    text, self.spoiled = text[:3] + ("1" if text[3] != "1" else "2") + text[4:], True
                x1, y1, x2, y2 = t["bbox"]
                plates.append({"type": t["type"], "plate": text, "bbox": list(t["bbox"]), "score": 1.0, "valid": True})
            if not self.truth[image_id]:
                plates.append({"type": "l_board", "plate": "12A3456", "bbox": [1, 1, 60, 20], "score": 0.9, "valid": True})
            dets = [Detection(CLASSES[a["category_id"] - 1], 1.0,
                              (a["bbox"][0], a["bbox"][1], a["bbox"][0] + a["bbox"][2], a["bbox"][1] + a["bbox"][3]))
                    for a in self.coco["annotations"] if a["image_id"] == image_id]
            out.append(ImageResult(plates=plates, detections=dets))
        return out


def test_evaluate_known_answer(tmp_path):
    data = tmp_path / "data"
    generate(data, settings("data", n_images=10, seed=5, min_size=320, max_size=400, plate_width_min=80, plate_width_max=200,
                            split_train=0.0, split_val=0.0, split_test=1.0, empty_fraction=0.2), workers=1, progress=False)
    coco = json.loads((data / "test.json").read_text())
    n_plates = sum(len(v) for v in truth_plates(coco).values())
    n_empty = sum(1 for v in truth_plates(coco).values() if not v)
    assert n_plates >= 5 and n_empty >= 1
    metrics = evaluate(Oracle(coco, data), data, tmp_path / "eval", progress=False)
    assert metrics["plates"] == n_plates
    assert metrics["eir"] == round((n_plates - 1) / n_plates, 4)
    assert metrics["char_accuracy"] == round((7 * n_plates - 1) / (7 * n_plates), 4)
    assert metrics["plate_recall"] == 1.0
    assert metrics["plate_precision"] == round(n_plates / (n_plates + n_empty), 4)
    assert metrics["plates_on_plate_free_images"] == n_empty
    assert metrics["bbox_mAP"] == 1.0  # every labelled box detected exactly
    saved = json.loads((tmp_path / "eval" / "metrics.json").read_text())
    assert saved["eir"] == metrics["eir"]
    report = (tmp_path / "eval" / "report.html").read_text()
    assert "data:image/png;base64," in report and "expected <b>" in report and "got <b>l_board 12A3456" in report


class SetOracle:
    """Knows every image of a data set and its out-of-distribution sets by its pixels. Reads the own split right;
    on 'original' finds nothing; on 'unseen-fonts' boxes every plate and misreads it; on 'plate-free' invents a
    plate per image; on 'unseen-photos' reads right."""

    def __init__(self, data_dir: Path):
        from platepipe.serving.images import read_image_file
        self.known = {}
        for name, folder in [("test", data_dir), *((p.name, p) for p in sorted((data_dir / "ood").iterdir()))]:
            coco = json.loads((folder / "test.json").read_text())
            truth = truth_plates(coco)
            for im in coco["images"]:
                key = read_image_file(folder / im["file_name"]).tobytes()
                self.known[key] = (name, truth[im["id"]])

    def predict(self, images):
        out = []
        for img in images:
            name, truth = self.known[img.tobytes()]
            plates = [{"type": t["type"], "plate": t["text"] if name != "unseen-fonts" else "00A0000",
                       "bbox": list(t["bbox"]), "score": 1.0, "valid": True} for t in truth]
            dets = [Detection(t["type"], 1.0, tuple(t["bbox"])) for t in truth]
            if name == "original":
                plates, dets = [], []
            if name == "plate-free":
                plates = [{"type": "l_board", "plate": "12A3456", "bbox": [1, 1, 60, 20], "score": 0.9, "valid": True}]
            out.append(ImageResult(plates=plates, detections=dets))
        return out


def test_evaluate_reports_each_out_of_distribution_set(tmp_path):
    """Every set the data step renders is evaluated on its own: EIR, detection recall by size, false plates, in
    metrics.json, the report and the KFP metrics rows; the gate can read any set."""
    from platepipe.components.evaluate import gate_eir
    from platepipe.pipeline.tasks import metric_rows

    data = tmp_path / "data"
    generate(data, settings("data", n_images=6, seed=5, min_size=320, max_size=400, plate_width_min=80, plate_width_max=200,
                            split_train=0.0, split_val=0.0, split_test=1.0, empty_fraction=0.0), workers=1, progress=False, ood_images=3)
    metrics = evaluate(SetOracle(data), data, tmp_path / "eval", progress=False)
    ood = metrics["ood"]
    assert set(ood) == {"original", "plate-free", "unseen-fonts", "unseen-photos"}
    assert metrics["eir"] == 1.0 and metrics["detection_recall"] == 1.0 and metrics["false_plates"] == 0
    assert ood["unseen-photos"]["eir"] == 1.0
    assert ood["original"]["plates"] >= 3 and ood["original"]["eir"] == 0.0 and ood["original"]["detection_recall"] == 0.0
    fonts = ood["unseen-fonts"]
    assert fonts["eir"] == 0.0 and fonts["detection_recall"] == 1.0 and fonts["char_accuracy"] < 1.0
    sized = [v for v in fonts["by_size"].values() if v["plates"]]
    assert sized and all(v["detection_recall"] == 1.0 for v in sized)
    assert sum(v["plates"] for v in fonts["by_size"].values()) == fonts["plates"]
    free = ood["plate-free"]
    assert free["plates"] == 0 and free["false_plates"] == 3 and free["plates_on_plate_free_images"] == 3
    assert "about" in free
    saved = json.loads((tmp_path / "eval" / "metrics.json").read_text())
    assert saved["ood"]["original"]["eir"] == 0.0
    report = (tmp_path / "eval" / "report.html").read_text()
    for name in ood:
        assert f"<th>{name}</th>" in report and f"<h2>{name} (" in report
    rows = dict(metric_rows(metrics))
    assert rows["eir"] == 1.0 and rows["original.eir"] == 0.0 and rows["plate-free.false_plates"] == 3.0
    assert rows["unseen-fonts.detection_recall"] == 1.0 and any(k.startswith("original.detection_recall.") for k in rows)
    assert gate_eir(metrics, "test") == 1.0 and gate_eir(metrics, "original") == 0.0
    with pytest.raises(ValueError, match="no such out-of-distribution set"):
        gate_eir({"eir": 1.0}, "original")


def test_evaluate_real_model_and_gate(trained, data_dir, tmp_path):
    _, pth = trained
    out = subprocess.run([str(PLATEPIPE), "evaluate", "--model", str(pth), "--data", str(data_dir),
                          "--out", str(tmp_path / "ev"), "--min-eir", "0.99"], capture_output=True, text=True, timeout=300)
    assert out.returncode == 1 and "gate failed: EIR" in out.stderr  # four iterations read nothing yet
    assert json.loads((tmp_path / "ev" / "metrics.json").read_text())["images"] == 3
    ok = subprocess.run([str(PLATEPIPE), "evaluate", "--model", str(pth), "--data", str(data_dir),
                         "--out", str(tmp_path / "ev2"), "--min-eir", "0"], capture_output=True, text=True, timeout=300)
    assert ok.returncode == 0, ok.stderr


def test_predict_good_and_bad_files(trained, data_dir, tmp_path):
    from PIL import Image
    _, pth = trained
    src = sorted((data_dir / "images").iterdir())[0]
    rgba = tmp_path / "rgba.png"
    Image.open(src).convert("RGBA").save(rgba)
    grey16 = tmp_path / "grey16.png"
    Image.fromarray((np.asarray(Image.open(src).convert("L"), np.uint16) * 257)).save(grey16)
    truncated = tmp_path / "truncated.jpg"
    truncated.write_bytes(src.read_bytes()[:400])
    text = tmp_path / "notes.jpg"
    text.write_text("hello")
    out = subprocess.run([str(PLATEPIPE), "predict", str(src), str(rgba), str(grey16), str(truncated), str(text),
                          str(tmp_path / "missing.png"), "--model", str(pth), "--json", "--draw", str(tmp_path / "drawn")],
                         capture_output=True, text=True, timeout=300)
    lines = [json.loads(l) for l in out.stdout.splitlines()]
    assert [l["image"] for l in lines] == [str(src), str(rgba), str(grey16), str(truncated), str(text),
                                           str(tmp_path / "missing.png")]
    assert all("response" in l for l in lines[:3])
    assert "damaged or truncated" in lines[3]["error"]
    assert "not an image" in lines[4]["error"]
    assert "no such file" in lines[5]["error"]
    assert out.returncode == 1  # some files failed
    assert len(list((tmp_path / "drawn").iterdir())) == 3


class FakeClock:
    """Time that passes only as training does: `per_iter` seconds for each training iteration, whatever the
    machine's pace, so that a test of the time budget has one verdict on every machine."""

    def __init__(self, per_iter: float):
        from mmengine.hooks import Hook

        self.now, clock = 1000.0, self

        class Tick(Hook):
            priority = "NORMAL"  # before TimeBudgetHook (LOW) reads the clock

            def after_train_iter(self, runner, batch_idx, data_batch=None, outputs=None):
                clock.now += per_iter

        self.hook = Tick()

    def monotonic(self) -> float:
        return self.now

    def time(self) -> float:
        return self.now

    def sleep(self, seconds: float) -> None:
        self.now += seconds


def test_a_time_budget_fits_the_schedule_instead_of_cutting_it(data_dir, tmp_path, capsys, monkeypatch):
    """3,000 iterations at 0.15 s each cannot run in 18 s: training is shortened and the learning-rate decay
    moved so that it still ends at its floor, not cut off at a high rate."""
    from platepipe.components.mm import schedule as parts
    from platepipe.components.train import train_stage
    clock = FakeClock(per_iter=0.15)
    monkeypatch.setattr(parts, "time", clock)
    spec = settings("model", preset="tiny"), settings("train", max_iters=3000, val_interval=100000, workers=0)
    cfg, ckpt, _ = train_stage("detector", data_dir, tmp_path, *spec, budget_min=0.3, hooks=(clock.hook,))
    assert "training detector (tiny: 3000 iterations" in capsys.readouterr().out
    last = torch.load(Path((tmp_path / "detector" / "last_checkpoint").read_text().strip()), map_location="cpu",
                      weights_only=False)  # our own file, with the optimiser and scheduler states
    iters = last["meta"]["iter"]
    assert 100 <= iters <= 120  # 18 s less what is kept back, at 0.15 s an iteration (116 here)
    cosine = last["param_schedulers"][-1]
    assert cosine["T_max"] == cosine["end"] - cosine["begin"] > 0
    assert cosine["end"] - 5 <= iters <= cosine["end"]  # it ran to the fitted end (the budget may stop it just short)
    floor = cfg["lr"] * 0.05
    lr = last["optimizer"]["param_groups"][0]["lr"]
    assert lr == pytest.approx(floor, rel=0.2)  # the decay ran its course (a cut-off run stays near cfg["lr"])


def _fitted(monkeypatch, val_seconds: float, val_interval: int = 100000, decay_begin: int = 2500, step: int = 100,
            ema=None, val_batches: int | None = None, end_aligned: bool = False):
    """A TimeBudgetHook of 60 s asked to fit a 5,000-iteration schedule at iteration `step`, 10 s in, at 0.1 s
    per iteration, after one validation of val_seconds (0: none yet)."""
    from types import SimpleNamespace

    from platepipe.components.mm import schedule as parts

    class CosineAnnealingLR(SimpleNamespace):
        pass

    class EMAHook(SimpleNamespace):
        pass

    hook = parts.TimeBudgetHook(minutes=1.0)
    clock = [1000.0]
    monkeypatch.setattr(parts.time, "monotonic", lambda: clock[0])
    # mmengine's loop, or one that counts its validations as EndAlignedTrainLoop does
    Loop = (type("Loop", (SimpleNamespace,), {"validations_left": parts.EndAlignedTrainLoop.validations_left})
            if end_aligned else SimpleNamespace)
    loop = Loop(_max_iters=5000, val_interval=val_interval, val_begin=2500)
    start = SimpleNamespace(iter=0, param_schedulers=[], train_loop=loop)
    if val_batches:
        start.val_loop = SimpleNamespace(dataloader=[None] * val_batches)
    hook.before_train(start)
    if val_seconds:
        hook.before_val_epoch(None)
        clock[0] += val_seconds
        hook.after_val_epoch(None)
    clock[0] = 1010.0  # 10 s of the 60 gone
    decay = CosineAnnealingLR(begin=decay_begin, end=5000, T_max=5000 - decay_begin)
    hooks = [EMAHook(ema_model=ema)] if ema else []
    runner = SimpleNamespace(iter=step - 1, param_schedulers=[decay], train_loop=loop, hooks=hooks,
                             work_dir="/x/reader")
    hook._fit(runner, per_iter=0.1)
    return loop, decay


def test_the_time_budget_keeps_back_time_for_the_validations_to_come(monkeypatch):
    """The fit plans iterations for the budget less 2% and what the validations still to come need: 10% of the
    budget for each validation before one was timed (or 0.75 of an iteration per batch where its length is
    known), then the longest one for each (the last one always)."""
    loop, decay = _fitted(monkeypatch, 0)
    iters = loop._max_iters
    assert abs(iters - (100 + (0.98 * 60 - 6 - 10) / 0.1)) <= 1  # 10% kept back
    assert (decay.begin, decay.end, decay.T_max) == (round(0.5 * iters), iters, iters - round(0.5 * iters))
    assert loop.val_begin == round(0.5 * iters)  # the first validation moved with the schedule
    loop, _ = _fitted(monkeypatch, 2.0)
    assert abs(loop._max_iters - (100 + (0.98 * 60 - 2.0 - 10) / 0.1)) <= 1  # the last validation only
    # not timed yet, but 20 batches long: 0.75 of an iteration (0.1 s) each
    loop, _ = _fitted(monkeypatch, 0, val_batches=20)
    assert abs(loop._max_iters - (100 + (0.98 * 60 - 20 * 0.75 * 0.1 - 10) / 0.1)) <= 1
    # every 100 iterations from halfway: 300, 400, 500 and the last one, 1 s each
    loop, _ = _fitted(monkeypatch, 1.0, val_interval=100)
    assert abs(loop._max_iters - (100 + (0.98 * 60 - 4 * 1.0 - 10) / 0.1)) <= 1


def _loop(max_iters: int, val_interval: int, val_begin: int, refit: dict | None = None):
    """An EndAlignedTrainLoop run over a stand-in runner; refit {iteration: new max_iters} moves the end as the
    time budget does. Returns the iterations it validated after, and the loop."""
    from platepipe.components.mm.schedule import EndAlignedTrainLoop

    loop = object.__new__(EndAlignedTrainLoop)  # the loop's own logic, without a dataloader to build
    validated = []

    def call_hook(name, **kwargs):
        if name == "after_train_iter" and refit and loop._iter + 1 in refit:
            loop._max_iters = refit[loop._iter + 1]

    model = SimpleNamespace(train=lambda: None, train_step=lambda batch, optim_wrapper: {})
    loop._runner = SimpleNamespace(call_hook=call_hook, model=model, optim_wrapper=None,
                                  val_loop=SimpleNamespace(run=lambda: validated.append(loop._iter)))
    loop._max_iters, loop._iter, loop.val_begin, loop.val_interval = max_iters, 0, val_begin, val_interval
    loop.stop_training, loop.dynamic_milestones, loop.dynamic_intervals = False, [0], [val_interval]
    loop.dataloader_iterator = iter(range(10 ** 6))
    loop.run()
    assert loop._iter == loop._max_iters
    return validated, loop


def test_validations_count_back_from_the_end():
    """The end is always validated once, and the interval's validations count back from it: an end fitted to
    2,210 validates at 2,010 and 2,210, not at 2,000, 2,200 and 2,210 as mmengine's loop does."""
    validated, loop = _loop(2210, 200, 1989)
    assert validated == [2010, 2210]
    assert loop.validations_left(0, 2210, 1989) == 2 and loop.validations_left(2010, 2210, 1989) == 1
    assert _loop(3000, 200, 2700)[0] == [2800, 3000]
    assert _loop(3000, 200, 2000)[0] == [2000, 2200, 2400, 2600, 2800, 3000]
    assert loop.validations_left(0, 3000, 2000) == 6
    assert _loop(4, 2, 4)[0] == [4]
    # the budget moves the end after a validation: one just validated is not repeated within half an interval
    validated, _ = _loop(2210, 200, 1989, refit={2050: 2230})
    assert validated == [2010, 2230]
    validated, _ = _loop(2210, 200, 1989, refit={2050: 2280})
    assert validated == [2010, 2280]  # 2,080 is too soon after 2,010
    validated, _ = _loop(2210, 200, 1989, refit={2050: 2350})
    assert validated == [2010, 2150, 2350]


def test_the_time_budget_keeps_back_time_for_the_validations_of_an_end_aligned_loop(monkeypatch):
    """Fitted with EndAlignedTrainLoop, the schedule keeps back time for its own validations: every 100 from
    halfway, counted back from the end, three of them in the time where mmengine's loop holds four."""
    loop, _ = _fitted(monkeypatch, 1.0, val_interval=100, end_aligned=True)
    assert abs(loop._max_iters - (100 + (0.98 * 60 - 3 * 1.0 - 10) / 0.1)) <= 1
    assert loop.validations_left(99, loop._max_iters, loop.val_begin) == 3


def test_the_time_budget_counts_from_the_train_steps_start(monkeypatch):
    """With a deadline (the train step's start plus its budget), a stage's budget is what is left of it when its
    training starts: the imports, the runner and the data it spent before are counted; a tenth at least."""
    from types import SimpleNamespace

    from platepipe.components.mm import schedule as parts

    now = [5000.0]
    monkeypatch.setattr(parts.time, "time", lambda: now[0])
    start = SimpleNamespace(iter=0, param_schedulers=[], train_loop=SimpleNamespace(_max_iters=100))
    for deadline, seconds in ((5000.0 + 13 * 60 - 5 - 12, 13 * 60 - 17), (5000.0 + 3600, 13 * 60), (4000.0, 78)):
        hook = parts.TimeBudgetHook(minutes=13, deadline=deadline)
        hook.before_train(start)
        assert hook.seconds == pytest.approx(seconds)
    hook = parts.TimeBudgetHook(minutes=None, deadline=5100.0)  # no budget: the deadline alone sets none
    hook.before_train(start)
    assert hook.seconds is None


def test_the_time_budget_refits_a_decay_under_way_from_where_it_is(monkeypatch):
    """Past the decay's start the fit keeps its start and moves its end (mmengine's chainable cosine goes on from
    the current rate to its floor at the new end); the weight average settles to the new length too."""
    from types import SimpleNamespace

    from platepipe.components.mm.optim import ema_momentum

    ema = SimpleNamespace(momentum=0.0, gamma=0)
    loop, decay = _fitted(monkeypatch, 0, decay_begin=50, ema=ema)
    iters = loop._max_iters
    assert 100 < iters < 5000 and (decay.begin, decay.end, decay.T_max) == (50, iters, iters - 50)
    assert (ema.momentum, ema.gamma) == ema_momentum(iters) == (6 / iters, iters // 10)


def test_a_chainable_cosine_refitted_mid_way_goes_on_smoothly_to_its_floor():
    """What the refit relies on: mmengine's CosineAnnealingLR given a new end mid-way continues from its current
    rate (no jump) and reaches its floor exactly at the new end."""
    from mmengine.optim.scheduler import CosineAnnealingLR

    opt = torch.optim.SGD([torch.nn.Parameter(torch.zeros(1))], lr=1.0)
    sched = CosineAnnealingLR(opt, eta_min=0.05, begin=0, end=1000, T_max=1000, by_epoch=False)
    rates = []
    for i in range(600):
        if i == 300:  # refit: 1,000 iterations become 600
            sched.end, sched.T_max = 600, 600
        opt.step()
        sched.step()
        rates.append(opt.param_groups[0]["lr"])
    jumps = [abs(b - a) for a, b in zip(rates, rates[1:])]
    assert max(jumps) < 0.01  # smooth: no step larger than the cosine's own
    assert rates[-1] == pytest.approx(0.05, abs=1e-4)  # at its floor at the new end
    assert all(b <= a + 1e-12 for a, b in zip(rates, rates[1:]))  # always decaying


def _plates_read(plate: Detection, text: str, score: float) -> tuple[dict, list[Detection]]:
    """The reader's answer for one plate (as PlateReader._read gives it): text read on it, one character box per
    character, every character scoring `score`."""
    from platepipe.serving.plates import decode
    x1, y1, x2, y2 = plate.bbox
    step = (x2 - x1) / 8
    chars = [Detection(c, score, (x1 + (k + 0.5) * step, y1 + 2, x1 + (k + 1.3) * step, y2 - 2))
             for k, c in enumerate(text) if c != "?"]
    return decode([plate] + chars, plate_score=0.0, char_score=0.0, keep_partial=True)[0], chars


def test_unsure_reads_get_further_looks_until_one_is_sure(trained, data_dir, monkeypatch):
    """A plate read partly, or whole but scoring under second_look, is read again from its box scaled by LOOKS[0]
    about its centre (and moved by its dx), then LOOKS[1], ..., as long as its surest read is still unsure; the
    surest read is kept,
    with its characters. Sure reads and reads of nothing (text the detector took for a plate) get no further look.
    Both stages' answers are set here (four training iterations find nothing); the crops are cut by the real code
    and read by the real tiny reader."""
    import cv2
    from mmengine.structures import InstanceData

    from platepipe.serving import reader as reader_module
    from platepipe.serving.reader import FIRST_LOOK, LOOKS, SECOND_LOOK

    reader = PlateReader(load_pipeline(trained[1]), keep_partial=True)
    images = [cv2.imread(str(p)) for p in sorted((data_dir / "images").iterdir())[:2]]
    found = [(10.0, 10.0, 90.0, 40.0), (100.0, 10.0, 180.0, 40.0), (10.0, 60.0, 90.0, 90.0), (100.0, 60.0, 180.0, 90.0),
             (10.0, 110.0, 90.0, 140.0), (100.0, 110.0, 180.0, 140.0)]
    real_run = reader_module.run_model

    def run_model(model, batch, scales, bf16=False):
        if model is not reader.models["detector"]:
            return real_run(model, batch, scales, bf16)
        n = len(found)
        # plate score 1: a read's score (plate score x its least sure character) is the score set below
        return [InstanceData(bboxes=torch.tensor(found), scores=torch.ones(n), labels=torch.ones(n, dtype=torch.long)),
                InstanceData(bboxes=torch.zeros((0, 4)), scores=torch.zeros(0), labels=torch.zeros(0, dtype=torch.long))]

    unsure = SECOND_LOOK - 0.05
    answers = {  # per look: what each plate reads, at what score
        FIRST_LOOK: {0: ("12A3456", 0.95), 1: ("12?3456", 0.9), 2: ("", 0.9), 3: ("34B5678", unsure - 0.1),
                     4: ("45C6789", 0.3), 5: ("67E890?", 0.9)},
        LOOKS[0]: {1: ("56C7890", SECOND_LOOK), 3: ("34B5679", unsure), 4: ("45C6780", unsure),  # 1 is sure now
                   5: ("67E890?", 0.9)},
        LOOKS[1]: {3: ("34B5678", unsure - 0.2), 4: ("45?6789", 0.9), 5: ("?7E890?", 0.9)},
        LOOKS[2]: {3: ("78D9012", 0.8), 4: ("45C6781", unsure - 0.1), 5: ("67E89??", 0.9)},  # 3 is sure; 4 never
        # the moved looks only for 5 (partial, 6 characters): 4's surest read is whole, just unsure
        LOOKS[3]: {5: ("67E89?1", 0.9)},
        LOOKS[4]: {5: ("67E8901", 0.8)},
    }
    assert len(LOOKS) == 5 and all(dx == 0 for _, _, dx in LOOKS[:3]) and LOOKS[3][2] == -LOOKS[4][2] != 0
    calls, boxes = [], []
    real_read = PlateReader._read

    def fake_read(images, plates, keys, look):
        calls.append((look, list(keys)))
        real_read(reader, images, plates, keys, look)  # cuts the crops (recorded below) and reads them for real
        return [_plates_read(plates[i][j], *answers[look][j]) for i, j in keys]  # then answers as set

    real_crop = reader_module.crop_plate
    monkeypatch.setattr(reader_module, "run_model", run_model)
    monkeypatch.setattr(reader_module, "crop_plate",
                        lambda img, box, *a, **k: boxes.append((calls[-1][0], box)) or real_crop(img, box, *a, **k))
    monkeypatch.setattr(reader, "_read", fake_read)
    results = reader.predict(images)
    assert [(s, sorted(k)) for s, k in calls] == [(FIRST_LOOK, [(0, j) for j in range(6)]),
                                                  (LOOKS[0], [(0, 1), (0, 3), (0, 4), (0, 5)]),
                                                  (LOOKS[1], [(0, 3), (0, 4), (0, 5)]), (LOOKS[2], [(0, 3), (0, 4), (0, 5)]),
                                                  (LOOKS[3], [(0, 5)]), (LOOKS[4], [(0, 5)])]
    assert len(boxes) == 6 + 4 + 3 + 3 + 1 + 1
    for look, keys in calls:
        sx, sy, dx = look
        for (_, j), box in zip(keys, [b for s, b in boxes if s == look]):
            x1, y1, x2, y2 = found[j]
            cx, cy, w, h = (x1 + x2) / 2 + dx * (x2 - x1), (y1 + y2) / 2, x2 - x1, y2 - y1
            assert np.allclose(box, (cx - w * sx / 2, cy - h * sy / 2, cx + w * sx / 2, cy + h * sy / 2))
    # the kept reads: the sure one as it was, the others the surest of their looks (4: the surest whole read)
    by_box = {tuple(p["bbox"]): p["plate"] for p in results[0].plates}
    assert by_box == {found[0]: "12A3456", found[1]: "56C7890", found[2]: "???????", found[3]: "78D9012",
                      found[4]: "45C6780", found[5]: "67E8901"}
    groups = []  # detections: each plate, then the characters of its kept read
    for det in results[0].detections:
        if det.label in ("r_board", "l_board"):
            groups.append("")
        else:
            groups[-1] += det.label
    assert groups == ["12A3456", "56C7890", "", "78D9012", "45C6780", "67E8901"]
    assert results[1].plates == [] and results[1].detections == []


def test_a_plate_cut_short_is_read_from_a_moved_box(trained, data_dir, monkeypatch):
    """The detector's box ends before the plate's last character: read from it, that character lies outside the
    box and the read is partial. The look moved 8% of the box's width to the right reads the characters inside the
    moved box, whole; the read reports the detector's own box. (The reader's characters are set in image pixels.)"""
    import cv2
    from mmengine.structures import InstanceData

    from platepipe.serving import reader as reader_module
    from platepipe.serving.reader import LOOKS

    reader = PlateReader(load_pipeline(trained[1]))
    image = cv2.imread(str(sorted((data_dir / "images").iterdir())[0]))
    plate = (100.0, 100.0, 300.0, 150.0)  # the plate runs on to x = 330; its box stops at 300
    chars = [(110.0 + 32 * k, 110.0, 130.0 + 32 * k, 140.0) for k in range(7)]  # the last at 302-322
    labels = [reader.classes["reader"].index(c) for c in "12A3456"]
    real_run, looks = reader_module.run_model, []

    def run_model(model, batch, scales, bf16=False):
        if model is reader.models["detector"]:
            return [InstanceData(bboxes=torch.tensor([plate]), scores=torch.tensor([0.9]),
                                 labels=torch.tensor([reader.classes["detector"].index("l_board")]))]
        real_run(model, batch, scales, bf16)
        return [InstanceData(bboxes=torch.tensor(chars), scores=torch.full((7,), 0.9), labels=torch.tensor(labels))
                for _ in batch]

    real_read = PlateReader._read
    monkeypatch.setattr(reader_module, "run_model", run_model)
    monkeypatch.setattr(reader_module, "to_image", lambda boxes, transform: np.asarray(boxes, np.float32))
    monkeypatch.setattr(reader, "_read", lambda images, plates, keys, look: looks.append(look)
                        or real_read(reader, images, plates, keys, look))
    result = reader.predict([image])[0]
    assert looks == [(1.0, 1.0, 0.0)] + list(LOOKS[:4])  # partial through the scaled looks; whole when moved right
    assert [(p["plate"], p["valid"]) for p in result.plates] == [("12A3456", True)]
    assert result.plates[0]["bbox"] == list(plate) and result.plates[0]["width"] == 200
    assert result.plates[0]["board_center_p"] == [200, 125]


def test_second_look_rules():
    from platepipe.serving.reader import _unsure
    assert not _unsure(None, 0.5)
    assert not _unsure({"plate": "???????", "valid": False, "score": 0.0}, 0.5)  # read nothing: not a plate
    assert not _unsure({"plate": "12?????", "valid": False, "score": 0.1}, 0.5)  # 2 characters: not a plate
    assert _unsure({"plate": "12?3456", "valid": False, "score": 0.9}, 0.5)      # partial
    assert _unsure({"plate": "12A3456", "valid": True, "score": 0.49}, 0.5)      # whole but unsure
    assert not _unsure({"plate": "12A3456", "valid": True, "score": 0.5}, 0.5)   # sure
    from platepipe.serving.reader import _cut_short
    assert _cut_short({"plate": "12A345?", "valid": False, "score": 0.9})        # a character short
    assert _cut_short({"plate": "?2A345?", "valid": False, "score": 0.9})        # two
    assert not _cut_short({"plate": "?2A34??", "valid": False, "score": 0.9})    # four read: not a box cut short
    assert not _cut_short({"plate": "12A3456", "valid": True, "score": 0.3})     # whole, however unsure
    assert not _cut_short(None)


def test_one_plate_read_from_two_boxes_is_reported_once():
    """Seen on the test split: the detector boxed one plate tightly (0.71) and, loosely, with its surroundings
    (0.29, IoU 0.41 with the tight box); both crops read "46E9975", and the second read was a false plate."""
    from platepipe.serving.reader import _drop_duplicates

    def read(plate, bbox, score, valid=True):
        return {"plate": plate, "bbox": bbox, "score": score, "valid": valid}

    tight, loose = read("46E9975", [73, 88, 268, 183], 0.71), read("46E9975", [42, 47, 340, 200], 0.29)
    assert _drop_duplicates([loose, tight]) == [tight]
    # other plates stay: another read beside it, the same text away from it, a partial read inside it
    beside = read("12A3456", [200, 90, 400, 185], 0.6)      # overlaps the tight box, IoU < 0.5, another plate
    elsewhere = read("46E9975", [500, 300, 700, 400], 0.5)  # no overlap
    partial = read("46E99?5", [42, 47, 340, 200], 0.9, valid=False)
    assert _drop_duplicates([tight, beside, elsewhere]) == [tight, beside, elsewhere]
    assert _drop_duplicates([partial, tight]) == [tight, partial]
    # boxes overlapping by IoU > 0.5 are one plate whatever they read (one box per plate type)
    assert _drop_duplicates([read("46E9975", [73, 88, 268, 183], 0.5), read("46E9976", [75, 88, 268, 185], 0.7)]) \
        == [read("46E9976", [75, 88, 268, 185], 0.7)]


def test_inference_precision_and_layout(trained, data_dir):
    """Both networks run with channels-last weights (same results as the plain layout) and, in bf16, compute
    in bfloat16 while the box decoding and NMS get float32 (mmcv's nms refuses bfloat16)."""
    import cv2
    from platepipe.serving.reader import run_model

    payload = load_pipeline(trained[1])
    images = [cv2.imread(str(p)) for p in sorted((data_dir / "images").iterdir())[:2]]
    fp32 = PlateReader(payload, plate_score=0.0, char_score=0.0, keep_partial=True, precision="fp32")
    bf16 = PlateReader(payload, plate_score=0.0, char_score=0.0, keep_partial=True, precision="bf16")
    model = fp32.models["detector"]
    conv = model.backbone.stem[0].conv
    assert conv.weight.is_contiguous(memory_format=torch.channels_last)
    seen = []
    handle = conv.register_forward_hook(lambda m, i, o: seen.append(o.dtype))
    small = [cv2.resize(img, (256, 192)) for img in images]
    for flag in (False, True):
        preds = run_model(model, small, [1.0, 1.0], bf16=flag)
        assert all(p.bboxes.dtype == torch.float32 and p.scores.dtype == torch.float32 for p in preds)
    handle.remove()
    assert seen == [torch.float32, torch.bfloat16]
    plain = load_pipeline(trained[1])
    from platepipe.serving.reader import build_model
    contiguous = build_model("detector", plain["detector"]["config"], plain["detector"]["state_dict"], "cpu")
    contiguous = contiguous.to(memory_format=torch.contiguous_format)
    a, b = run_model(model, small, [1.0, 1.0]), run_model(contiguous, small, [1.0, 1.0])
    for pa, pb in zip(a, b):
        assert torch.allclose(pa.scores, pb.scores, atol=1e-4) and torch.allclose(pa.bboxes, pb.bboxes, atol=1e-2)
    assert len(bf16.predict(images)) == len(fp32.predict(images)) == 2
    with pytest.raises(ValueError, match="precision must be auto, fp32 or bf16"):
        PlateReader(payload, precision="fp16")


def test_native_bf16_is_a_plain_answer_even_without_onednn(monkeypatch):
    import torch

    from platepipe.serving.reader import native_bf16
    assert native_bf16("cpu") is bool(torch.ops.mkldnn._is_mkldnn_bf16_supported())
    monkeypatch.setattr(torch.ops, "mkldnn", object())  # a torch build without the oneDNN query
    assert native_bf16("cpu") is False


def test_the_model_section_sets_the_thresholds_everything_reads_at(trained, data_dir, tmp_path):
    """One place sets the scores a model reads at (the model section): training picks its checkpoints at its
    char_score and writes all three into pipeline.pth; PlateReader (serving, evaluation) reads at the file's."""
    import dataclasses
    import shutil

    from platepipe.components.train import _stage_cfg, runner_config
    from platepipe.serving.reader import weights_digest

    out, _ = trained
    model = dataclasses.replace(TINY[0], plate_score=0.45, char_score=0.55, read_score=0.35)
    evaluator = runner_config("reader", _stage_cfg("reader", *TINY), data_dir, tmp_path, model, TINY[1])["val_evaluator"]
    assert evaluator == {"type": "PlateReadMetric", "score_threshold": 0.55}

    copy = tmp_path / "train"
    shutil.copytree(out, copy)
    (copy / "pipeline.pth").unlink()
    pth = train(data_dir, copy, model, TINY[1])  # both stages are done: it exports at once
    payload = load_pipeline(pth)
    assert payload["thresholds"] == {"plate_score": 0.45, "char_score": 0.55, "read_score": 0.35}
    reader = PlateReader.from_file(pth, device="cpu")
    assert (reader.plate_score, reader.char_score, reader.read_score) == (0.45, 0.55, 0.35)
    assert PlateReader.from_file(pth, device="cpu", char_score=0.2).char_score == 0.2  # a caller may override

    changed = dict(payload, thresholds={"plate_score": 0.45, "char_score": 0.05, "read_score": 0.35})
    torch.save(changed, tmp_path / "changed.pth")
    with pytest.raises(ValueError, match="corrupted"):  # the digest covers the thresholds
        load_pipeline(tmp_path / "changed.pth")
    bad = dict(payload, thresholds={"plate_score": 1.5, "char_score": 0.4, "read_score": 0.25})
    bad["digest"] = weights_digest(bad)
    torch.save(bad, tmp_path / "bad.pth")
    with pytest.raises(ValueError, match="bad thresholds"):
        load_pipeline(tmp_path / "bad.pth")
