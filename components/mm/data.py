"""The training data as MMDetection sees it: the plate-crop dataset and the transforms.

  PlateCropDataset  one sample per labelled plate: its characters and text regions (plus mined negatives)
  PlateRandomCrop   the detector's training crop, often placed to hold a whole plate
  LoadPlateRegion   the reader's image loading: each plate's surroundings decoded once, then kept in memory
  CropPlate         cuts the plate out (with jitter when training) at the reader's input size
"""

from __future__ import annotations

import copy
import json
import os.path as osp
import time

import numpy as np
from mmdet.datasets import BaseDetDataset
from mmdet.datasets.transforms import RandomCrop
from mmdet.registry import DATASETS, TRANSFORMS

from platepipe.configs.model import READER_CLASSES
from platepipe.serving.crops import crop_plate, read_window, to_crop
from platepipe.serving.labels import CLASSES, PLATE_TYPES


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
    deviations of the jitter). Decoding the photo for every crop is several times slower than cutting it from
    memory. At most `max_mb` MB are kept (per loading process); past that, regions are decoded on every load."""

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


assert len(READER_CLASSES) + len(PLATE_TYPES) == len(CLASSES)
