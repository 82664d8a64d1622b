"""PlateReadMetric: the reader's exact read rate (EIR) on plate crops, which picks the best checkpoint."""

from __future__ import annotations

from mmdet.registry import METRICS
from mmengine.evaluator import BaseMetric

from platepipe.configs.model import READER_CLASSES
from platepipe.serving.plates import Detection, decode


def read_crop(pred, plate_type: str, crop_shape, score_threshold: float, classes=READER_CLASSES) -> dict | None:
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
    model's char_score (train: the model section), the score serving reads at, so the best checkpoint is the best
    served one."""

    default_prefix = "plate"

    def __init__(self, score_threshold: float, **kwargs):
        super().__init__(**kwargs)
        self.score_threshold = score_threshold

    def process(self, data_batch, data_samples) -> None:
        for sample in data_samples:
            plate = read_crop(_Pred(sample["pred_instances"]), sample["plate_type"], sample["img_shape"],
                              self.score_threshold)
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
