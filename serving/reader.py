"""Two-stage inference from a pipeline.pth: find plates in each image, read each plate's crop, decode.

Used by evaluation, `platepipe predict` and the TorchServe handler. Builds both models from the configs
inside the file: no config on disk.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from .crops import crop_plate, to_image
from .labels import CLASSES
from .plates import Detection, box_fields, decode

FORMAT = "platepipe.pipeline/1"
STAGES = ("detector", "reader")


@dataclass
class ImageResult:
    plates: list[dict]            # decoded plates, best first
    detections: list[Detection]   # every detection in image pixels (plates, regions, characters)


# the scores a model reads at travel inside pipeline.pth (`thresholds`, from the model section of the run's
# configuration); a file exported before it carried them is read at these, the scores it was chosen at
THRESHOLDS_OF_OLDER_FILES = {"plate_score": 0.3, "char_score": 0.4, "read_score": 0.25}
# a plate read partly or scoring under SECOND_LOOK is read again from other crops of its box (LOOKS: the box scaled
# by (x, y) about its centre and moved by dx of its width), one after the other while its surest read is still
# unsure, and the surest read kept; the moved looks (the box 15% wider, moved 8% of its width right, then left)
# only while the read is partial with 5 or 6 characters read, for boxes the detector cut short
SECOND_LOOK = 0.5
FIRST_LOOK = (1.0, 1.0, 0.0)
LOOKS = ((0.95, 0.92, 0.0), (1.06, 1.1, 0.0), (0.9, 0.85, 0.0), (1.15, 1.05, 0.08), (1.15, 1.05, -0.08))


class PlateReader:
    def __init__(self, payload: dict, device: str = "cpu", plate_score: float | None = None,
                 char_score: float | None = None, read_score: float | None = None,
                 keep_partial: bool = False, second_look: float = SECOND_LOOK, precision: str = "auto"):
        """Thresholds left None are the model's own (thresholds(payload))."""
        import torch

        self.device = torch.device(device)
        self.payload = payload
        own = thresholds(payload)
        self.plate_score = own["plate_score"] if plate_score is None else plate_score
        self.char_score = own["char_score"] if char_score is None else char_score
        self.read_score = own["read_score"] if read_score is None else read_score
        self.keep_partial = keep_partial
        self.second_look = second_look  # 0: one read per plate
        if precision not in ("auto", "fp32", "bf16"):
            raise ValueError(f"precision must be auto, fp32 or bf16, not {precision!r}")
        # bfloat16 where the device computes it natively (auto); elsewhere it is emulated and slower
        self.bf16 = precision == "bf16" or (precision == "auto" and native_bf16(self.device))
        self.models, self.classes = {}, {}
        for stage in ("detector", "reader"):
            cfg = payload[stage]["config"]
            self.models[stage] = build_model(stage, cfg, payload[stage]["state_dict"], self.device)
            self.classes[stage] = tuple(cfg["classes"])
        self.input_size = infer_size(payload["detector"]["config"])
        self.crop_size = tuple(payload["reader"]["config"]["crop_size"])
        self.crop_fill = bool(payload["reader"]["config"].get("crop_fill", False))  # files before filling: fit

    @classmethod
    def from_file(cls, path: str | Path, device: str = "auto", **kwargs) -> "PlateReader":
        import torch

        if device == "auto":
            device = "cuda" if torch.cuda.is_available() else "cpu"
        return cls(load_pipeline(path), device=device, **kwargs)

    def predict(self, images: list[np.ndarray]) -> list[ImageResult]:
        """BGR uint8 images (any sizes) -> one ImageResult each, in one batch per stage (one more reader batch
        per further look while a plate's read is unsure)."""
        if not images:
            return []
        resized, scales = zip(*(resize_long(img, self.input_size) for img in images))
        found = run_model(self.models["detector"], resized, scales, self.bf16)
        det_classes = self.classes["detector"]
        plates = [[Detection(det_classes[int(l)], float(s), tuple(float(v) for v in b))
                   for b, s, l in zip(pred.bboxes.tolist(), pred.scores.tolist(), pred.labels.tolist())
                   if s >= self.plate_score] for pred in found]
        keys = [(i, j) for i, kept in enumerate(plates) for j in range(len(kept))]
        reads = {key: [read] for key, read in zip(keys, self._read(images, plates, keys, FIRST_LOOK))}
        for look in LOOKS if self.second_look else ():
            again = [key for key in keys if self._worth_a_look(_surest(reads[key])[0], look)]
            if not again:
                break
            for key, read in zip(again, self._read(images, plates, again, look)):
                reads[key].append(read)
        out = []
        for i, kept in enumerate(plates):
            decoded, detections = [], []
            for j, plate in enumerate(kept):
                plate_read, chars = _surest(reads[i, j])
                detections += [plate] + chars
                decoded += [plate_read] if plate_read else []
            decoded = _drop_duplicates(decoded)
            if not self.keep_partial:
                decoded = reported(decoded, self.read_score)
            out.append(ImageResult(plates=sorted(decoded, key=lambda p: -p["score"]), detections=detections))
        return out

    def _worth_a_look(self, read: dict | None, look: tuple[float, float, float]) -> bool:
        """Is a plate's surest read so far worth this further look: a moved look where it seems cut short, the
        others where it is unsure."""
        return _cut_short(read) if look[2] else _unsure(read, self.second_look)

    def _read(self, images, plates, keys, look) -> list[tuple[dict | None, list[Detection]]]:
        """Read the plates at keys (image, plate) from crops of their boxes scaled by look's (x, y) about their
        centres and moved by its dx of their widths, in one reader batch: (the decoded plate or None, its
        characters) each."""
        if not keys:
            return []
        sx, sy, dx = look
        crops, transforms, moved = [], [], []
        for i, j in keys:
            plate = plates[i][j]
            x1, y1, x2, y2 = plate.bbox
            shift = dx * (x2 - x1)
            # a moved look reads the characters inside the box moved with it; the read keeps the detector's box
            moved.append(Detection(plate.label, plate.score, (x1 + shift, y1, x2 + shift, y2)))
            cx, cy = (x1 + x2) / 2 + shift, (y1 + y2) / 2
            hw, hh = (x2 - x1) * sx / 2, (y2 - y1) * sy / 2
            crop, transform = crop_plate(images[i], (cx - hw, cy - hh, cx + hw, cy + hh), self.crop_size,
                                         fill=self.crop_fill)
            crops.append(crop)
            transforms.append(transform)
        read_classes, out = self.classes["reader"], []
        for (i, j), box, transform, pred in zip(keys, moved, transforms, run_model(self.models["reader"], crops,
                                                                                    [1.0] * len(crops), self.bf16)):
            boxes = to_image(pred.bboxes.cpu().numpy(), transform)
            chars = [Detection(read_classes[int(l)], float(s), tuple(float(v) for v in b))
                     for b, s, l in zip(boxes.tolist(), pred.scores.tolist(), pred.labels.tolist())]
            decoded = decode([box] + chars, plate_score=self.plate_score, char_score=self.char_score,
                             keep_partial=True)
            read = {**decoded[0], **box_fields(plates[i][j].bbox)} if decoded else None
            out.append((read, chars))
        return out


def _surest(reads: list[tuple[dict | None, list[Detection]]]) -> tuple[dict | None, list[Detection]]:
    """The surest of a plate's reads: a whole one first, then by score (the first of equals)."""
    return max(reads, key=lambda r: (r[0] is not None and r[0]["valid"], r[0]["score"] if r[0] else -1.0))


def _unsure(read: dict | None, score: float) -> bool:
    """Does a plate's read deserve a second look: something was read (4 characters or more: not the nothing
    read on text the detector took for a plate) but it is not whole or scores under `score`?"""
    if read is None or sum(c != "?" for c in read["plate"]) < 4:
        return False
    return not read["valid"] or read["score"] < score


def _cut_short(read: dict | None) -> bool:
    """Does a plate's read look cut short by its box, worth a look from a moved box: partial, with at least 5 of
    its 7 places read (a character or two missing)?"""
    return read is not None and not read["valid"] and sum(c != "?" for c in read["plate"]) >= 5


def build_model(stage: str, cfg: dict, state_dict: dict, device):
    """One stage's MMDetection model, built from its config (as in pipeline.pth) with its weights, on device,
    in eval mode, its weights laid out channels-last (oneDNN's fast convolutions on CPU: a quarter less time
    per image, same results), its depthwise layers in float32 (serving.layers: as in training); a clear error
    where the weights do not fit the config."""
    import torch
    from mmdet.registry import MODELS
    from mmdet.utils import register_all_modules
    from mmengine.config import ConfigDict

    from .layers import depthwise_in_float32

    register_all_modules(init_default_scope=True)
    model = MODELS.build(ConfigDict(cfg["model"]))
    shapes = model.state_dict()
    wrong = [f"{k} {list(v.shape)} (the model's: {list(shapes[k].shape)})" for k, v in state_dict.items()
             if k in shapes and tuple(v.shape) != tuple(shapes[k].shape)]
    if wrong:
        raise ValueError(f"the {stage} weights do not fit its config ({len(wrong)} of wrong shape, e.g. {wrong[0]}): "
                         f"the file is damaged or from another version")
    missing, unexpected = model.load_state_dict(state_dict, strict=False)
    if missing or unexpected:
        raise ValueError(f"the {stage} weights do not fit its config (missing {missing[:3]}, "
                         f"unexpected {unexpected[:3]}): the file is damaged or from another version")
    depthwise_in_float32(model)
    return model.to(device).to(memory_format=torch.channels_last).eval()


def native_bf16(device) -> bool:
    """Does the device compute bfloat16 natively (CUDA with bf16 support; a CPU with AVX-512 BF16 or AMX,
    through oneDNN)? Elsewhere bfloat16 is emulated and slower than float32."""
    import torch

    if torch.device(device).type == "cuda":
        return torch.cuda.is_bf16_supported()
    try:  # a private oneDNN query: a torch build without it counts as no native bfloat16
        return bool(torch.ops.mkldnn._is_mkldnn_bf16_supported())
    except (AttributeError, RuntimeError):
        return False


def resize_long(img: np.ndarray, size: int) -> tuple[np.ndarray, float]:
    """The image resized so that its long side is `size` px, and the scale applied."""
    import cv2

    h, w = img.shape[:2]
    scale = size / max(h, w)
    out = cv2.resize(img, (max(1, round(w * scale)), max(1, round(h * scale))),
                     interpolation=cv2.INTER_AREA if scale < 1 else cv2.INTER_LINEAR)
    return out, scale


def run_model(model, images, scales, bf16: bool = False):
    """One MMDetection single-stage model on a batch of BGR images, each already scaled by its scale; returns
    each image's predictions (bboxes, scores, labels) in the coordinates of the image before scaling.
    bf16: the network runs under bfloat16 autocast (as it trained), the box decoding and NMS in float32."""
    import torch
    from mmdet.structures import DetDataSample

    inputs, samples = [], []
    for img, scale in zip(images, scales):
        h, w = img.shape[:2]
        inputs.append(torch.from_numpy(np.ascontiguousarray(img.transpose(2, 0, 1))))
        ori = (int(round(h / scale)), int(round(w / scale)))
        samples.append(DetDataSample(metainfo=dict(img_shape=(h, w), ori_shape=ori, scale_factor=(scale, scale))))
    with torch.no_grad():
        data = model.data_preprocessor({"inputs": inputs, "data_samples": samples}, False)
        batch = data["inputs"]
        with torch.autocast(batch.device.type, dtype=torch.bfloat16, enabled=bf16):
            outs = model.bbox_head(model.extract_feat(batch))
        outs = [[t.float() for t in level] for level in outs]
        return model.bbox_head.predict_by_feat(*outs, batch_img_metas=[s.metainfo for s in data["data_samples"]],
                                               rescale=True)


def thresholds(payload: dict) -> dict[str, float]:
    """The scores the model in payload reads at: plate_score, char_score, read_score."""
    return {**THRESHOLDS_OF_OLDER_FILES, **(payload.get("thresholds") or {})}


def reported(plates: list[dict], read_score: float) -> list[dict]:
    """The reads worth reporting: whole (the plate pattern) and scoring at least read_score."""
    return [p for p in plates if p["valid"] and p["score"] >= read_score]


def _drop_duplicates(plates: list[dict]) -> list[dict]:
    """Two detector boxes on one plate read twice: keep the surer read. Two reads are one plate where their boxes
    overlap by IoU > 0.5 (one box per type, say), or where they read the same plate and the smaller box lies at
    least half inside the larger (a loose box around the plate and its surroundings beside a tight one)."""
    kept: list[dict] = []
    for p in sorted(plates, key=lambda p: (not p["valid"], -p["score"])):
        if not any(_same_plate(p, k) for k in kept):
            kept.append(p)
    return kept


def _same_plate(a: dict, b: dict) -> bool:
    from .plates import _area, _intersection, iou

    if iou(a["bbox"], b["bbox"]) > 0.5:
        return True
    smaller = min(_area(a["bbox"]), _area(b["bbox"]))
    return (a["valid"] and b["valid"] and a["plate"] == b["plate"] and smaller > 0
            and _intersection(a["bbox"], b["bbox"]) >= 0.5 * smaller)


def infer_size(detector_config: dict) -> int:
    """The long side the detector looks at (files exported before infer_size: its training input_size)."""
    return int(detector_config.get("infer_size", detector_config["input_size"]))


def weights_digest(payload: dict) -> str:
    """sha256 of both stages' configs and tensors (names, dtypes, shapes, bytes): what `digest` in pipeline.pth
    holds, so that a flipped byte anywhere in the weights is caught on load."""
    import hashlib

    import torch

    h = hashlib.sha256()
    for stage in STAGES:
        h.update(json.dumps(payload[stage]["config"], sort_keys=True).encode())
        for name in sorted(payload[stage]["state_dict"]):
            t = payload[stage]["state_dict"][name]
            h.update(f"{stage}/{name}:{t.dtype}:{tuple(t.shape)}".encode())
            h.update(t.detach().cpu().contiguous().reshape(-1).view(torch.uint8).numpy().tobytes())
    if "thresholds" in payload:  # files before them have digests without them
        h.update(json.dumps(payload["thresholds"], sort_keys=True).encode())
    return h.hexdigest()


def check_pipeline(path: str | Path) -> dict:
    """load_pipeline, then build both stages on the CPU (shapes included): what every command that takes a
    model does before it accepts it."""
    payload = load_pipeline(path)
    for stage in STAGES:
        try:
            build_model(stage, payload[stage]["config"], payload[stage]["state_dict"], "cpu")
        except ValueError as exc:
            raise ValueError(f"{path}: {exc}") from None
        except Exception as exc:  # a config that builds nothing sensible
            raise ValueError(f"{path}: the {stage} model cannot be built from its config ({type(exc).__name__}: "
                             f"{str(exc).splitlines()[0][:200]}): re-export it with `platepipe train`") from None
    return payload


def load_pipeline(path: str | Path) -> dict:
    """Read and check a pipeline.pth with the safe loader; clear errors for files that are not one."""

    import torch

    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"model file not found: {path}")
    try:
        payload = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as exc:  # any failure of the safe loader means "not a file we can use"
        why = (str(exc).strip().splitlines() or [f"{type(exc).__name__}, {path.stat().st_size} bytes"])[0]
        raise ValueError(f"{path} is not a loadable pipeline.pth ({why}): "
                         "export one with `platepipe train` or point --model at the right file") from exc
    if not isinstance(payload, dict) or payload.get("format") != FORMAT:
        raise ValueError(f"{path} is not a platepipe pipeline.pth (format {payload.get('format') if isinstance(payload, dict) else type(payload).__name__!r}, "
                         f"expected {FORMAT}): export one with `platepipe train`")
    if payload["classes"] != list(CLASSES):
        raise ValueError(f"{path} was trained with classes {payload['classes']}, this platepipe expects {list(CLASSES)}")
    for stage in STAGES:
        if stage not in payload or "config" not in payload[stage] or "state_dict" not in payload[stage]:
            raise ValueError(f"{path} lacks the {stage} stage: re-export it with `platepipe train`")
    if "digest" not in payload:
        raise ValueError(f"{path} carries no digest of its weights, so damage cannot be told apart: re-export it "
                         f"with this platepipe (`platepipe train`)")
    own = payload.get("thresholds", THRESHOLDS_OF_OLDER_FILES)
    if (not isinstance(own, dict) or set(own) != set(THRESHOLDS_OF_OLDER_FILES)
            or not all(isinstance(v, float) and 0.0 <= v <= 1.0 for v in own.values())):
        raise ValueError(f"{path} carries bad thresholds {own!r} (expected plate_score, char_score and read_score "
                         f"between 0 and 1): re-export it with `platepipe train`")
    if weights_digest(payload) != payload["digest"]:
        raise ValueError(f"{path} is corrupted: its weights do not match the digest written when it was exported; "
                         f"copy it again from where it was made, or re-export it")
    return payload
