"""The reader's negatives (boxes the trained detector takes for plates where there are none: the reader learns
to read nothing there) and bfloat16 training."""

import json
import math
import re
from pathlib import Path

import pytest
import torch

from platepipe.components.train import NEGATIVE_SHARE, bf16, mine_negatives, train_stage
from platepipe.pipeline.config import settings
from platepipe.configs.model import stage_config

PLATE_SCORE = settings("model").plate_score  # the detections the model reads are the ones mined


def _plates(data_dir: Path) -> dict:
    coco = json.loads((data_dir / "train.json").read_text())
    names = {c["id"]: c["name"] for c in coco["categories"]}
    files = {i["id"]: i["file_name"] for i in coco["images"]}
    out: dict = {}
    for a in coco["annotations"]:
        if names[a["category_id"]] in ("r_board", "l_board"):
            x, y, w, h = a["bbox"]
            out.setdefault(files[a["image_id"]], []).append((x, y, x + w, y + h))
    return out


@pytest.fixture(scope="module")
def eager_detector(tmp_path_factory):
    """A real tiny detector whose head says "plate" everywhere: every point scores sigmoid(6) with a box two
    strides wide around it, so it fires on and off the plates alike."""
    from mmdet.registry import MODELS
    from mmdet.utils import register_all_modules
    from mmengine.config import ConfigDict
    from mmengine.registry import DefaultScope

    register_all_modules(init_default_scope=False)
    cfg = stage_config("detector", "tiny")
    with DefaultScope.overwrite_default_scope("mmdet"):
        model = MODELS.build(ConfigDict(cfg["model"]))
    model.init_weights()
    with torch.no_grad():
        for conv in model.bbox_head.rtm_cls:
            conv.weight.zero_()
            conv.bias.fill_(6.0)
        for conv in model.bbox_head.rtm_reg:
            conv.weight.zero_()
            conv.bias.fill_(1.0)
    ckpt = tmp_path_factory.mktemp("negatives") / "eager.pth"
    torch.save({"state_dict": model.state_dict()}, ckpt)
    return cfg, ckpt


def test_negatives_touch_no_plate_and_are_capped(data_dir, eager_detector, tmp_path):
    cfg, ckpt = eager_detector
    out = mine_negatives(cfg, ckpt, data_dir, tmp_path / "negatives.json", PLATE_SCORE)
    negatives = json.loads(out.read_text())
    plates = _plates(data_dir)
    n_plates = sum(len(v) for v in plates.values())
    assert len(negatives) == int(NEGATIVE_SHARE * n_plates) > 0  # far more boxes were found than kept
    for neg in negatives:
        x1, y1, x2, y2 = neg["bbox"]
        assert neg["score"] >= PLATE_SCORE and x2 > x1 and y2 > y1
        for px1, py1, px2, py2 in plates.get(neg["file_name"], []):
            assert x2 <= px1 or px2 <= x1 or y2 <= py1 or py2 <= y1, f"{neg} touches a plate"
        assert (data_dir / neg["file_name"]).is_file()
    assert not list(tmp_path.glob("*.partial"))


def test_negatives_are_kept_on_resume(data_dir, eager_detector, tmp_path):
    cfg, ckpt = eager_detector
    out = tmp_path / "negatives.json"
    out.write_text("[]")  # an earlier run's result
    assert mine_negatives(cfg, ckpt, data_dir, out, PLATE_SCORE) == out and out.read_text() == "[]"


def test_a_negative_is_a_crop_with_nothing_to_read(data_dir, tmp_path):
    import platepipe.components.mm  # noqa: F401  registers the dataset and transforms
    from mmdet.registry import DATASETS
    from mmdet.utils import register_all_modules
    from mmengine.registry import DefaultScope

    register_all_modules(init_default_scope=False)
    cfg = stage_config("reader", "tiny")
    coco = json.loads((data_dir / "train.json").read_text())
    image = coco["images"][0]
    neg = {"file_name": image["file_name"], "height": image["height"], "width": image["width"],
           "bbox": [10.0, 12.0, 90.0, 40.0], "score": 0.5}
    (tmp_path / "negatives.json").write_text(json.dumps([neg]))
    root = str(data_dir) + "/"
    with DefaultScope.overwrite_default_scope("mmdet"):
        plain = DATASETS.build(dict(type="PlateCropDataset", data_root=root, data_prefix=dict(img=root),
                                    ann_file="train.json", pipeline=cfg["train_pipeline"]))
        with_neg = DATASETS.build(dict(type="PlateCropDataset", data_root=root, data_prefix=dict(img=root),
                                       ann_file="train.json", pipeline=cfg["train_pipeline"],
                                       negatives=str(tmp_path / "negatives.json")))
    assert len(with_neg) == len(plain) + 1
    item = with_neg[len(with_neg) - 1]
    sample = item["data_samples"]
    assert len(sample.gt_instances.bboxes) == 0 and sample.plate_type == "none" and sample.plate_text == ""
    w, h = cfg["crop_size"]
    assert tuple(item["inputs"].shape) == (3, h, w)
    assert len(plain[0]["data_samples"].gt_instances.bboxes) > 0  # a plate crop still has its characters


def test_precision_choice():
    assert bf16("fp32") is False and bf16("bf16") is True
    native = torch.cuda.is_bf16_supported() if torch.cuda.is_available() else torch.ops.mkldnn._is_mkldnn_bf16_supported()
    assert bf16("auto") == bool(native)


def test_bf16_wrapper_computes_in_bf16_and_keeps_float32_weights():
    from platepipe.components.mm import optim as parts

    model = torch.nn.Sequential(torch.nn.Conv2d(3, 4, 3), torch.nn.ReLU())
    before = model[0].weight.detach().clone()
    wrapper = parts.BF16OptimWrapper(optimizer=torch.optim.SGD(model.parameters(), lr=0.1))
    with wrapper.optim_context(model):
        out = model(torch.rand(2, 3, 8, 8))
    assert out.dtype == torch.bfloat16
    wrapper.update_params(out.float().mean())
    assert model[0].weight.dtype == torch.float32 and not torch.equal(model[0].weight, before)


@pytest.mark.parametrize("precision", ["bf16", "fp32"])
def test_training_in_either_precision_has_finite_losses(data_dir, tmp_path, precision, capsys):
    spec = settings("model", preset="tiny"), settings("train", max_iters=4, val_interval=4, workers=0, precision=precision)
    train_stage("reader", data_dir, tmp_path, *spec)
    out = capsys.readouterr().out
    assert f"batch 4, {precision})" in out
    losses = [float(v) for v in re.findall(r"iter \d+/4 \(\d+%\), loss ([^,]+),", out)]
    assert losses and all(math.isfinite(v) for v in losses)


def test_negatives_written_while_the_reader_trains_are_taken_up(data_dir, tmp_path, monkeypatch):
    """Trained beside the detector, the reader starts before the negatives exist: the dataset holds places for
    them (the share of the plate count) that stand in for plates, and takes the negatives up once the file is
    written, as plates are no longer where negatives now are."""
    from platepipe.components.mm import data as parts
    from mmdet.registry import DATASETS
    from mmdet.utils import register_all_modules
    from mmengine.registry import DefaultScope

    register_all_modules(init_default_scope=False)
    cfg = stage_config("reader", "tiny")
    root = str(data_dir) + "/"
    negatives = tmp_path / "negatives.json"
    clock = [1000.0]
    monkeypatch.setattr(parts.time, "monotonic", lambda: clock[0])
    with DefaultScope.overwrite_default_scope("mmdet"):
        data = DATASETS.build(dict(type="PlateCropDataset", data_root=root, data_prefix=dict(img=root),
                                   ann_file="train.json", pipeline=cfg["train_pipeline"], negatives=str(negatives),
                                   negative_share=0.5))
    plates = len(_plates_list(data_dir))
    assert data.negative_slots == int(0.5 * plates) > 0 and len(data) == plates + data.negative_slots
    assert data.get_data_info(plates)["plate_type"] in ("r_board", "l_board")  # a plate, for now

    image = json.loads((data_dir / "train.json").read_text())["images"][0]
    negatives.write_text(json.dumps([{"file_name": image["file_name"], "height": image["height"],
                                      "width": image["width"], "bbox": [10.0, 12.0, 90.0, 40.0], "score": 0.5}]))
    clock[0] += 0.5  # looked for less than a second ago: not yet
    assert data.get_data_info(plates)["plate_type"] != "none"
    clock[0] += 1.0
    first = data.get_data_info(plates)
    assert first["plate_type"] == "none" and first["instances"] == [] and first["plate_bbox"] == [10.0, 12.0, 90.0, 40.0]
    assert len(data[plates]["data_samples"].gt_instances.bboxes) == 0  # read as nothing
    if data.negative_slots > 1:  # more places than negatives: the rest stand in for plates still
        assert data.get_data_info(plates + 1)["plate_type"] in ("r_board", "l_board")
    assert len(data) == plates + data.negative_slots  # the sampler's length does not change


def _plates_list(data_dir: Path) -> list:
    return [p for boxes in _plates(data_dir).values() for p in boxes]
