"""MMDetection/MMEngine parts the training needs, registered under the `mmdet` scope on import:

  PlateCropDataset  one sample per labelled plate: its characters and text regions (plus mined negatives)
  PlateRandomCrop   the detector's training crop, often placed to hold a whole plate
  LoadPlateRegion   the reader's image loading: each plate's surroundings decoded once, then kept in memory
  CropPlate         cuts the plate out (with jitter when training) at the reader's input size
  PlateReadMetric   exact read rate (EIR) of the reader on plate crops, for best-checkpoint selection
  MineNegativesHook the reader's negatives mined with the detector's weights part-way through its training
  DetectorWatchHook the reader's watch on the detector trained beside it (cores, failure)
  TimeBudgetHook    fits training into a wall-clock budget (fewer iterations, schedule fitted), then stops
  EndAlignedTrainLoop  IterBasedTrainLoop validating at the end and every val_interval before it
  ProgressHook      one line per log interval: iteration, percent, elapsed, ETA
  BF16OptimWrapper  the forward pass and loss in bfloat16 autocast on CPU or GPU, the weights in float32
  GroupedOptimWrapperConstructor  mmengine's per-weight settings, with the weights of equal settings in one group
  FastExpMomentumEMA ExpMomentumEMA updated with one foreach call per iteration instead of one call per tensor
"""

from __future__ import annotations

import contextlib
import copy
import json
import math
import os.path as osp
import time
from contextlib import contextmanager

import numpy as np
import torch
from mmdet.datasets import BaseDetDataset
from mmdet.datasets.transforms import RandomCrop
from mmdet.models.layers import ExpMomentumEMA
from mmdet.registry import (DATASETS, HOOKS, LOOPS, METRICS, MODELS, OPTIM_WRAPPER_CONSTRUCTORS, OPTIM_WRAPPERS,
                            TRANSFORMS)
from mmengine.evaluator import BaseMetric
from mmengine.hooks import Hook
from mmengine.optim import DefaultOptimWrapperConstructor, OptimWrapper
from mmengine.runner import IterBasedTrainLoop

from platepipe.configs.model import READER_CLASSES
from platepipe.serving.crops import crop_plate, read_window, to_crop
from platepipe.serving.labels import CLASSES, PLATE_TYPES
from platepipe.serving.plates import Detection, decode
from platepipe.serving.reader import CHAR_SCORE


def _inside(inner: list[float], outer: list[float]) -> bool:
    """COCO [x, y, w, h] boxes: is inner's centre inside outer?"""
    cx, cy = inner[0] + inner[2] / 2, inner[1] + inner[3] / 2
    return outer[0] <= cx <= outer[0] + outer[2] and outer[1] <= cy <= outer[1] + outer[3]


@DATASETS.register_module(force=True)
class PlateCropDataset(BaseDetDataset):
    """COCO file in, one entry per plate out, with the characters and regions whose centres lie inside it.

    negatives: a JSON file of boxes in the images that are not plates ({"file_name", "bbox", "height",
    "width"}; components.train.mine_negatives writes it): each becomes an entry with nothing to read, so the
    reader learns to read nothing where the detector takes text or clutter for a plate. The file may appear
    while the reader trains (the detector trains beside it and mines them at its end): until then the dataset
    holds `negative_share` x the plate count places for them, each standing in for a plate, and every load
    looks for the file (at most once a second, in whichever process loads the data)."""

    METAINFO = {"classes": READER_CLASSES}

    def __init__(self, *args, negatives: str | None = None, negative_share: float = 0.25, **kwargs):
        self.negatives, self.negative_share = negatives, negative_share  # before the base class loads the data
        self._negative_entries: list[dict] | None = None
        self._looked = 0.0
        self.negative_slots = 0
        super().__init__(*args, **kwargs)

    def full_init(self) -> None:
        if self._fully_initialized:
            return
        super().full_init()
        if self.negatives:  # the negatives' places: as many as there are where the file is there, else the share
            found = self._loaded_negatives()
            self.negative_slots = len(found) if found is not None else int(self.negative_share * super().__len__())

    def load_data_list(self) -> list[dict]:
        with open(self.ann_file) as f:
            coco = json.load(f)
        names = {c["id"]: c["name"] for c in coco["categories"]}
        by_image: dict[int, list[dict]] = {}
        for ann in coco["annotations"]:
            by_image.setdefault(ann["image_id"], []).append(ann)
        label_of = {name: i for i, name in enumerate(self.metainfo["classes"])}
        entries = []
        for image in coco["images"]:
            anns = by_image.get(image["id"], [])
            for plate in (a for a in anns if names[a["category_id"]] in PLATE_TYPES):
                instances = []
                for a in anns:
                    name = names[a["category_id"]]
                    if name in label_of and _inside(a["bbox"], plate["bbox"]):
                        x, y, w, h = a["bbox"]
                        instances.append({"bbox": [x, y, x + w, y + h], "bbox_label": label_of[name], "ignore_flag": 0})
                x, y, w, h = plate["bbox"]
                entries.append({
                    "img_path": self._image_path(image["file_name"]),
                    "img_id": plate["id"], "height": image["height"], "width": image["width"],
                    "plate_bbox": [x, y, x + w, y + h], "plate_type": names[plate["category_id"]],
                    "plate_text": plate.get("text", ""), "instances": instances,
                })
        return entries

    def _image_path(self, file_name: str) -> str:
        return osp.join(self.data_prefix.get("img", "") or self.data_root or "", file_name)

    def _loaded_negatives(self) -> list[dict] | None:
        """The negatives as entries, or None while their file is not there (looked for at most once a second)."""
        if self._negative_entries is None and self.negatives and time.monotonic() - self._looked >= 1.0:
            self._looked = time.monotonic()
            if osp.isfile(self.negatives):
                with open(self.negatives) as f:
                    self._negative_entries = [{
                        "img_path": self._image_path(neg["file_name"]), "img_id": 10**9 + k, "height": neg["height"],
                        "width": neg["width"], "plate_bbox": list(neg["bbox"]), "plate_type": "none",
                        "plate_text": "", "instances": []} for k, neg in enumerate(json.load(f))]
        return self._negative_entries

    def __len__(self) -> int:
        return super().__len__() + self.negative_slots

    def get_data_info(self, idx: int) -> dict:
        plates = super().__len__()
        if idx < plates:
            return super().get_data_info(idx)
        k = idx - plates  # a negative's place: the negative, or a plate while there is none for it (yet)
        negatives = self._loaded_negatives() or []
        if k < len(negatives):
            return dict(copy.deepcopy(negatives[k]), sample_idx=idx)
        return super().get_data_info(k % plates)


@TRANSFORMS.register_module(force=True)
class PlateRandomCrop(RandomCrop):
    """mmdet's RandomCrop, except that with probability `whole_prob` the crop is placed (at random among such
    places) to hold one whole plate, picked at random, where the plate fits in it.

    A plain random crop of 320 px almost never holds a whole plate 250 px wide, so the detector never saw
    large plates whole and found them as pieces (validation: 6 of 66 plates over 240 px missed that way)."""

    def __init__(self, *args, whole_prob: float = 0.5, **kwargs):
        super().__init__(*args, **kwargs)
        self.whole_prob = whole_prob
        self._target = None

    def _crop_data(self, results: dict, crop_size, allow_negative_crop: bool):
        self._target = None
        boxes = results.get("gt_bboxes")
        if boxes is not None and len(boxes) and np.random.rand() < self.whole_prob:
            box = boxes.numpy()[np.random.randint(len(boxes))]
            self._target = (box, crop_size)  # crop_size is (h, w)
        return super()._crop_data(results, crop_size, allow_negative_crop)

    def _rand_offset(self, margin):
        margin_h, margin_w = margin
        offsets = [np.random.randint(0, margin_h + 1), np.random.randint(0, margin_w + 1)]
        if self._target is not None:
            box, size = self._target
            for axis, (lo_edge, hi_edge) in enumerate(((box[1], box[3]), (box[0], box[2]))):
                lo = max(0, int(np.ceil(hi_edge)) - size[axis])
                hi = min(int(np.floor(lo_edge)), (margin_h, margin_w)[axis])
                if lo <= hi:
                    offsets[axis] = np.random.randint(lo, hi + 1)
        return offsets[0], offsets[1]


@TRANSFORMS.register_module(force=True)
class LoadPlateRegion:
    """LoadImageFromFile for the reader: the first load of a plate decodes its image and keeps the region around the
    plate box (the box grown by `margin` of its width and height, and 16 px, on each side) in memory; later loads of
    that plate take it from there. The region's offset and the image's size go along for CropPlate, which falls
    back to the whole image in the rare case a jittered crop reaches past the region (an edge moved 4 standard
    deviations of the jitter). Decoding the photo for each crop took 3.3-4 ms, against the 0.7-1 ms a crop takes from
    memory, about a tenth of a reader iteration on this CPU (docs/BENCHMARKS.md). The quick preset's 2,391
    training plates keep 470 MB; at most `max_mb` MB are kept (per loading process), past that regions are
    decoded on every load."""

    def __init__(self, margin: float = 0.5, max_mb: float = 2048):
        self.margin, self.max_bytes = margin, max_mb * 2 ** 20
        self._regions: dict[tuple, tuple[np.ndarray, tuple[int, int], tuple[int, int]]] = {}
        self._bytes = 0

    def __call__(self, results: dict) -> dict:
        key = (results["img_path"], *(round(float(v), 2) for v in results["plate_bbox"]))
        cached = self._regions.get(key)
        if cached is None:
            img = read_image(results["img_path"])
            x1, y1, x2, y2 = results["plate_bbox"]
            mx, my = self.margin * (x2 - x1) + 16, self.margin * (y2 - y1) + 16
            rx1, ry1 = max(0, int(np.floor(x1 - mx))), max(0, int(np.floor(y1 - my)))
            rx2, ry2 = min(img.shape[1], int(np.ceil(x2 + mx))), min(img.shape[0], int(np.ceil(y2 + my)))
            cached = (np.ascontiguousarray(img[ry1:ry2, rx1:rx2]), (rx1, ry1), img.shape[:2])
            if self._bytes + cached[0].nbytes <= self.max_bytes:
                self._regions[key] = cached
                self._bytes += cached[0].nbytes
        region, offset, full_shape = cached
        results["img"] = region.copy()  # the transforms after this one may change it in place
        results["img_offset"], results["img_full_shape"] = offset, full_shape
        results["img_shape"] = results["ori_shape"] = region.shape[:2]
        return results

    def __repr__(self) -> str:
        return f"LoadPlateRegion(margin={self.margin})"


def read_image(path: str) -> np.ndarray:
    """A training image as LoadImageFromFile decodes it (OpenCV, BGR colour); a clear error where it cannot be read."""
    import cv2

    img = cv2.imread(path, cv2.IMREAD_COLOR)
    if img is None:
        raise FileNotFoundError(f"cannot read image {path}: the data set is damaged or moved; make it again")
    return img


def _region_holds(results: dict, box: np.ndarray, size, fill: bool) -> bool:
    """Does the loaded region hold every pixel crop_plate reads for box, on each side either inside the region or
    where the region reaches the image's edge (the same crop as from the whole image)?"""
    rx, ry = results["img_offset"]
    rh, rw = results["img"].shape[:2]
    full_h, full_w = results["img_full_shape"]
    x1, y1, x2, y2 = read_window(box, size, fill)
    return ((rx == 0 or x1 >= rx) and (ry == 0 or y1 >= ry)
            and (rx + rw == full_w or x2 <= rx + rw) and (ry + rh == full_h or y2 <= ry + rh))


@TRANSFORMS.register_module(force=True)
class CropPlate:
    """Cut results['plate_bbox'] out of the image at size (w, h); move the instance boxes along.

    jitter: standard deviation of each box edge's shift, as a fraction of the plate's width/height.
    fill: stretch the plate to fill the size (see serving.crops).
    """

    def __init__(self, size: tuple[int, int], jitter: float = 0.0, fill: bool = True):
        self.size = tuple(size)
        self.jitter = jitter
        self.fill = fill

    def __call__(self, results: dict) -> dict:
        box = np.asarray(results["plate_bbox"], np.float32)
        if self.jitter:
            w, h = box[2] - box[0], box[3] - box[1]
            box = box + np.random.normal(0, self.jitter, 4).astype(np.float32) * np.float32([w, h, w, h])
            if box[2] - box[0] < 4 or box[3] - box[1] < 4:
                box = np.asarray(results["plate_bbox"], np.float32)
        shift = np.zeros(4, np.float32)  # image coordinates -> those of results["img"]
        if "img_offset" in results:  # a region of the image (LoadPlateRegion): its coordinates, or the whole image
            if _region_holds(results, box, self.size, self.fill):
                shift = np.tile(np.float32(results["img_offset"]), 2)
            else:
                results["img"] = read_image(results["img_path"])
        crop, transform = crop_plate(results["img"], box - shift, self.size, fill=self.fill)
        kept = []
        out_w, out_h = self.size
        for inst in results.get("instances", []):
            b = to_crop(np.asarray(inst["bbox"], np.float32) - shift, transform)[0]
            clipped = np.clip(b, 0, [out_w, out_h, out_w, out_h])
            area = max(0, b[2] - b[0]) * max(0, b[3] - b[1])
            kept_area = max(0, clipped[2] - clipped[0]) * max(0, clipped[3] - clipped[1])
            if area > 0 and kept_area / area >= 0.6:
                kept.append({**inst, "bbox": clipped.tolist()})
        results["instances"] = kept
        results["img"] = crop
        results["img_shape"] = crop.shape[:2]
        results["ori_shape"] = crop.shape[:2]
        results["scale_factor"] = (1.0, 1.0)
        return results

    def __repr__(self) -> str:
        return f"CropPlate(size={self.size}, jitter={self.jitter}, fill={self.fill})"


def read_crop(pred, plate_type: str, crop_shape, classes=READER_CLASSES, score_threshold: float = CHAR_SCORE) -> dict | None:
    """Decode the reader's detections on one crop as a plate of the given type (or None)."""
    h, w = crop_shape[:2]
    dets = [Detection(plate_type, 1.0, (0.0, 0.0, float(w), float(h)))]
    for box, score, label in zip(pred.bboxes.tolist(), pred.scores.tolist(), pred.labels.tolist()):
        dets.append(Detection(classes[label], float(score), tuple(box)))
    plates = decode(dets, plate_score=0.0, char_score=score_threshold, keep_partial=True)
    return plates[0] if plates else None


@METRICS.register_module(force=True)
class PlateReadMetric(BaseMetric):
    """EIR on crops: a plate counts when all 7 characters are read right, in order; characters read at the
    score serving reads them at (serving.reader CHAR_SCORE), so the best checkpoint is the best served one."""

    default_prefix = "plate"

    def __init__(self, score_threshold: float = CHAR_SCORE, **kwargs):
        super().__init__(**kwargs)
        self.score_threshold = score_threshold

    def process(self, data_batch, data_samples) -> None:
        for sample in data_samples:
            plate = read_crop(_Pred(sample["pred_instances"]), sample["plate_type"], sample["img_shape"],
                              score_threshold=self.score_threshold)
            read = plate["plate"] if plate and plate.get("valid") else ""
            truth = sample["plate_text"]
            chars = sum(a == b for a, b in zip(read, truth)) if read else 0
            self.results.append((read == truth, chars, len(truth)))

    def compute_metrics(self, results: list) -> dict:
        n = max(1, len(results))
        return {"eir": sum(r[0] for r in results) / n,
                "char_acc": sum(r[1] for r in results) / max(1, sum(r[2] for r in results))}


class _Pred:
    """pred_instances as a plain object with tensors, whether it came as a dict or InstanceData."""

    def __init__(self, pred):
        get = pred.get if isinstance(pred, dict) else (lambda k: getattr(pred, k))
        self.bboxes, self.scores, self.labels = get("bboxes"), get("scores"), get("labels")


@LOOPS.register_module(force=True)
class EndAlignedTrainLoop(IterBasedTrainLoop):
    """mmengine's IterBasedTrainLoop, but its validations count back from the end: at max_iters, max_iters -
    val_interval, ... (from val_begin on). mmengine's validates at multiples of val_interval and at the end, so a
    schedule fitted to a time budget that ends just past a multiple validated twice in a row (2,200 and 2,210:
    about 20 s of a quick detector's time). The end moves while the budget fits the schedule: a validation less
    than half an interval after the last one is left out (the one at the end never)."""

    last_val: int | None = None

    def validates(self, it: int) -> bool:
        """Whether the loop validates after iteration `it` (counted from 1)."""
        if it < self.val_begin:
            return False
        if it == self._max_iters:
            return True
        return ((self._max_iters - it) % self.val_interval == 0
                and (self.last_val is None or it - self.last_val >= self.val_interval / 2))

    def validations_left(self, after: int, iters: int, val_begin: int) -> int:
        """How many validations a schedule of `iters` iterations holds after iteration `after` (the end's
        included), for a first validation at val_begin."""
        first = max(after + 1, val_begin)
        return max(0, (iters - first) // self.val_interval) + 1

    def run(self) -> None:
        self.runner.call_hook("before_train")
        self.runner.call_hook("before_train_epoch")
        if self._iter > 0:
            for _ in range(self._iter):  # resumed: skip the batches already trained on, as mmengine does
                next(self.dataloader_iterator)
        while self._iter < self._max_iters and not self.stop_training:
            self.runner.model.train()
            self.run_iter(next(self.dataloader_iterator))
            self._decide_current_val_interval()
            if self.runner.val_loop is not None and self.validates(self._iter):
                self.last_val = self._iter
                self.runner.val_loop.run()
        self.runner.call_hook("after_train_epoch")
        self.runner.call_hook("after_train")
        return self.runner.model


@HOOKS.register_module(force=True)
class TimeBudgetHook(Hook):
    """Fit training into `minutes` of wall clock.

    Every 5% of the budget, until its last 5%, it measures the pace of the last stretch (the last 10% of the
    budget, validations left out) and fits the schedule to the time left: fewer iterations than planned where
    those would not fit, never more; the learning-rate decay begins at the same fraction of the new schedule and
    ends at its end (a decay under way is stretched or shortened from where it is: mmengine's cosine is
    chainable, so the rate goes on smoothly from its value to its floor at the new end); the first validation
    and the weight average (EMA) follow the new length. A cut-off cosine would leave the learning rate high and
    the model worse. What it keeps back is for the validations still to come (each as long as the longest seen;
    until one is seen, VAL_PER_BATCH training iterations per validation batch, or `reserve` of the budget
    where the validation's length is unknown) and 2% of the budget. Whatever happens after that, it stops at
    the budget; the loop then validates and checkpoints as at its last iteration.

    deadline (time.time() seconds): where given, the budget is what is left until then when training starts (at
    most `minutes`), so that what came before it (imports, building the runner, loading the data) is counted too."""

    priority = "LOW"
    STRETCH = 0.05  # of the budget between two fits; the pace is measured over the last two stretches
    # a validation batch (half a training batch, no backward pass) took 0.5-0.6 training iterations on 2 cores
    # (reader and detector of the quick preset): a little more is assumed until one has been timed
    VAL_PER_BATCH = 0.75

    def __init__(self, minutes: float | None = None, reserve: float = 0.1, deadline: float | None = None):
        self.seconds = minutes * 60 if minutes else None
        self.deadline = deadline
        self.reserve = reserve  # of the budget kept back for each validation, until one can be estimated
        self.val_batches: int | None = None  # the validation's length in batches, where known
        self.started = self.val_started = None
        self.first_iter = 0
        self.marks: list[tuple[float, int, float]] = []  # (time, iteration, validation seconds so far) per fit
        self.val_seconds = 0.0  # the longest validation so far
        self.val_total = 0.0
        self.planned: tuple[int, list[float], float] | None = None  # iterations, decay starts, first validation

    def before_val_epoch(self, runner) -> None:
        self.val_started = time.monotonic()

    def after_val_epoch(self, runner, metrics=None) -> None:
        if self.val_started is not None:
            took = time.monotonic() - self.val_started
            self.val_seconds, self.val_total = max(self.val_seconds, took), self.val_total + took

    @contextmanager
    def paused(self):
        """Time spent inside is no training (mining, say): left out of the pace, as validations are."""
        started = time.monotonic()
        try:
            yield
        finally:
            self.val_total += time.monotonic() - started

    def before_train(self, runner) -> None:
        self.started = time.monotonic()
        if self.seconds and self.deadline:  # at least a tenth of the budget, however late it starts
            self.seconds = min(self.seconds, max(0.1 * self.seconds, self.deadline - time.time()))
        self.first_iter = runner.iter
        try:
            self.val_batches = len(runner.val_loop.dataloader)
        except (AttributeError, RuntimeError, TypeError):  # no validation loop, or one of unknown length
            self.val_batches = None
        fitted = [s.end for s in self._decays(runner) if s.end < runner.train_loop._max_iters]
        if self.seconds and fitted:  # resumed from a run whose schedule was fitted to the budget: keep its end
            runner.train_loop._max_iters = min(fitted)

    @staticmethod
    def _decays(runner) -> list:
        schedulers = runner.param_schedulers or []
        if isinstance(schedulers, dict):
            schedulers = [s for group in schedulers.values() for s in group]
        return [s for s in schedulers if type(s).__name__.startswith("Cosine")]

    def after_train_iter(self, runner, batch_idx, data_batch=None, outputs=None) -> None:
        if not self.seconds:
            return
        done, now = runner.iter + 1 - self.first_iter, time.monotonic()
        if done == 5:  # the first iterations pay for start-up: time from here
            self.marks = [(now, runner.iter + 1, self.val_total)]
        elif (self.marks and runner.iter + 1 - self.marks[-1][1] >= 20 and now - self.marks[-1][0] >= self.STRETCH
              * self.seconds and now - self.started < 0.95 * self.seconds):  # time to look at the pace again
            self.marks.append((now, runner.iter + 1, self.val_total))
            then, at, val_then = self.marks[max(0, len(self.marks) - 3)]
            self._fit(runner, (now - then - (self.val_total - val_then)) / (runner.iter + 1 - at))
        if now - self.started > self.seconds:
            loop = runner.train_loop
            if loop._max_iters > runner.iter + 1:
                runner.logger.warning(f"time budget of {self.seconds / 60:.1f} min reached at iteration "
                                      f"{runner.iter + 1}: finishing")
                loop._max_iters = runner.iter + 1

    def _validations(self, loop, step: int, iters: int) -> int:
        """How many validations a schedule of `iters` iterations still holds after `step` (the last included)."""
        if hasattr(loop, "validations_left"):  # EndAlignedTrainLoop
            return loop.validations_left(step, iters, self._val_begin(iters))
        first = max(step + 1, self._val_begin(iters))
        return max(0, (iters - 1) // loop.val_interval - (first - 1) // loop.val_interval) + 1

    def _val_begin(self, iters: int) -> int:
        return max(1, round(self.planned[2] * iters))

    def _fit(self, runner, per_iter: float) -> None:
        """Fit the schedule to the time left, at per_iter seconds per iteration (validations left out)."""
        loop, step = runner.train_loop, runner.iter + 1
        decays = self._decays(runner)
        if self.planned is None:
            self.planned = (loop._max_iters, [s.begin / loop._max_iters for s in decays],
                            getattr(loop, "val_begin", 1) / loop._max_iters)
        planned, starts, _ = self.planned
        left = 0.98 * self.seconds - (time.monotonic() - self.started)
        fits = planned
        one_val = (self.val_seconds or (self.VAL_PER_BATCH * self.val_batches * per_iter if self.val_batches
                                        else self.reserve * self.seconds))
        for _ in range(3):  # the validations kept back for depend on the length, and the length on them
            kept_back = self._validations(loop, step, fits) * one_val
            fits = min(planned, max(step + 2, step + int((left - kept_back) / max(per_iter, 1e-6))))
        if fits == loop._max_iters:
            return
        # say it the first time and when it changes by more than 5%, not at every small correction
        worth_saying = loop._max_iters == planned or abs(fits - loop._max_iters) > 0.05 * loop._max_iters
        for s, start in zip(decays, starts):
            if s.begin > step:  # not begun: it begins at the same fraction of the new schedule
                s.begin = max(step + 1, round(start * fits))
            s.end = fits
            s.T_max = s.end - s.begin
        loop._max_iters = fits
        if hasattr(loop, "val_begin"):
            loop.val_begin = self._val_begin(fits)
        for hook in getattr(runner, "hooks", []):  # the weight average settles to the new schedule's end
            if type(hook).__name__ == "EMAHook" and hasattr(hook, "ema_model"):
                hook.ema_model.momentum, hook.ema_model.gamma = ema_momentum(fits)
        if worth_saying:
            stage = osp.basename(str(getattr(runner, "work_dir", "")).rstrip("/")) or "training"
            print(f"  {stage}: {self.seconds / 60:.1f} min time budget at {per_iter:.2f} s per iteration: training {fits} of "
                  f"{planned} iterations, learning-rate schedule fitted", flush=True)


def ema_momentum(iters: int) -> tuple[float, int]:
    """ExpMomentumEMA's (momentum, gamma) for a schedule of `iters` iterations: the momentum starts near 1 (the
    average follows the model while that changes fast) and settles to about 1 / (iters / 6), so that at the
    end it averages over the last sixth of the schedule, the learning-rate decay."""
    return min(0.5, 6 / iters), max(1, iters // 10)


class MineNegativesHook(Hook):
    """Mine the reader's negatives with the detector's weights as they are at `at` of its schedule (once; the
    time it takes is no training for the time budget): `mine(model)` does it (components.train)."""

    priority = "LOW"

    def __init__(self, at: float, mine):
        self.at, self.mine, self.done = at, mine, False

    def after_train_iter(self, runner, batch_idx, data_batch=None, outputs=None) -> None:
        if self.done or runner.iter + 1 < round(self.at * runner.train_loop.max_iters):
            return
        self.done = True
        budget = next((h for h in runner.hooks if isinstance(h, TimeBudgetHook)), None)
        with budget.paused() if budget else contextlib.nullcontext():
            self.mine(runner.model)


class DetectorWatchHook(Hook):
    """The reader's hook while the detector trains beside it in a child process (components.train): every 10
    iterations it looks whether that process is done, and then gives the reader every core; it stops the
    reader when the detector failed."""

    priority = "LOW"

    def __init__(self, child, cores: int):
        self.child, self.cores, self.done = child, cores, False

    def after_train_iter(self, runner, batch_idx, data_batch=None, outputs=None) -> None:
        if self.done or (runner.iter + 1) % 10:
            return
        code = self.child.poll()
        if code is None:
            return
        if code:
            raise RuntimeError(f"training the detector failed (exit code {code}; its output is above): "
                               "the reader stops too")
        self.done = True
        torch.set_num_threads(self.cores)
        print(f"  detector done: the reader goes on with its negatives on {self.cores} cores", flush=True)


@HOOKS.register_module(force=True)
class ProgressHook(Hook):
    """A plain progress line every `interval` iterations: stage, iteration, percent, loss, elapsed, ETA."""

    priority = "BELOW_NORMAL"

    def __init__(self, stage: str, interval: int = 25, echo=None):
        self.stage, self.interval = stage, interval
        self.echo = echo or (lambda line: print(line, flush=True))
        self.started = None
        self.start_iter = 0

    def before_train(self, runner) -> None:
        self.started = time.monotonic()
        self.start_iter = runner.iter
        if runner.iter:
            self.echo(f"  {self.stage}: resumed at iteration {runner.iter} of {runner.train_loop.max_iters}")

    def after_train_iter(self, runner, batch_idx, data_batch=None, outputs=None) -> None:
        done, total = runner.iter + 1, runner.train_loop.max_iters
        if done % self.interval and done != total:
            return
        elapsed = time.monotonic() - self.started
        rate = elapsed / max(1, done - self.start_iter)
        loss = float(outputs["loss"].item()) if outputs and "loss" in outputs else float("nan")
        self.echo(f"  {self.stage}: iter {done}/{total} ({100 * done / total:.0f}%), loss {loss:.3f}, "
                  f"{_clock(elapsed)} elapsed, ETA {_clock(rate * (total - done))}")

    def after_val_epoch(self, runner, metrics=None) -> None:
        if metrics:
            shown = ", ".join(f"{k} {v:.4f}" for k, v in metrics.items() if isinstance(v, float))
            self.echo(f"  {self.stage}: validation at iter {runner.iter}: {shown}")


def _clock(seconds: float) -> str:
    seconds = int(seconds)
    return f"{seconds // 3600}:{seconds % 3600 // 60:02d}:{seconds % 60:02d}"


@OPTIM_WRAPPERS.register_module(force=True)
class BF16OptimWrapper(OptimWrapper):
    """OptimWrapper with the forward pass and loss under bfloat16 autocast, on whatever device the model is on.
    Weights, gradients and optimiser state stay float32; bfloat16 has float32's range, so no loss scaling
    (mmengine's AmpOptimWrapper is for CUDA float16 and refuses a CPU). Validation runs outside it, in float32."""

    @contextmanager
    def optim_context(self, model):
        device = next(model.parameters()).device.type
        with super().optim_context(model), torch.autocast(device, dtype=torch.bfloat16):
            yield


@OPTIM_WRAPPER_CONSTRUCTORS.register_module(force=True)
class GroupedOptimWrapperConstructor(DefaultOptimWrapperConstructor):
    """mmengine's constructor, which makes one parameter group per weight wherever paramwise_cfg is set (no weight
    decay for norms and biases), with the weights of equal settings put back into one group: the fused AdamW then
    updates all of them in one call per group instead of one per weight (240 calls per reader iteration, 22 ms of
    its 0.2 s on this CPU). The same update: AdamW treats every weight on its own."""

    def __call__(self, model):
        wrapper = super().__call__(model)
        groups: dict[tuple, dict] = {}
        for group in wrapper.optimizer.param_groups:
            settings = {k: v for k, v in group.items() if k != "params"}
            key = tuple(sorted((k, repr(v)) for k, v in settings.items()))
            groups.setdefault(key, dict(settings, params=[]))["params"].extend(group["params"])
        wrapper.optimizer.param_groups[:] = list(groups.values())
        return wrapper


@MODELS.register_module(force=True)
class FastExpMomentumEMA(ExpMomentumEMA):
    """ExpMomentumEMA, every averaged tensor updated by one foreach lerp per iteration: the same average, but the
    per-tensor Python loop of the original took 9 ms of the reader's 0.17-0.19 s iterations on this CPU (5%;
    docs/BENCHMARKS.md). Integer buffers (BatchNorm's counters) are not averaged, as in the original."""

    def update_parameters(self, model) -> None:
        if self.steps == 0 or self.steps % self.interval:  # the first copy, and the steps between updates
            super().update_parameters(model)
            return
        source = model.state_dict() if self.update_buffers else dict(model.named_parameters())
        keys = [k for k, p in self.avg_parameters.items() if p.dtype.is_floating_point]
        momentum = (1 - self.momentum) * math.exp(-float(1 + self.steps) / self.gamma) + self.momentum
        device = next(iter(self.avg_parameters.values())).device
        torch._foreach_lerp_([self.avg_parameters[k].data for k in keys],
                             [source[k].data.to(device) for k in keys], momentum)
        if not self.update_buffers:  # buffers follow the model, as in the original
            for b_avg, b_src in zip(self.module.buffers(), model.buffers()):
                b_avg.data.copy_(b_src.data.to(b_avg.device))
        self.steps += 1


assert len(READER_CLASSES) + len(PLATE_TYPES) == len(CLASSES)
