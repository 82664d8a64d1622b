"""Plate crops: the geometry training and inference share."""

import numpy as np
import pytest

from platepipe.serving.crops import MARGIN, PAD_VALUE, crop_plate, to_crop, to_image


def scene(box, colour=(0, 0, 255)):
    img = np.full((400, 600, 3), 255, np.uint8)
    x1, y1, x2, y2 = box
    img[y1:y2, x1:x2] = colour
    return img


def filled(crop, colour=(0, 0, 255)):
    """Bounds (x1, y1, x2, y2) of the pixels of the given colour."""
    ys, xs = np.nonzero((np.abs(crop.astype(int) - colour).sum(axis=2) < 40))
    return xs.min(), ys.min(), xs.max() + 1, ys.max() + 1


@pytest.mark.parametrize("box", [(100, 100, 290, 200), (50, 150, 463, 250)])  # two-row-like 1.9:1, one-row 4.1:1
def test_fill_stretches_every_plate_over_the_whole_crop(box):
    crop, transform = crop_plate(scene(box), box, (256, 96))
    assert crop.shape == (96, 256, 3)
    x1, y1, x2, y2 = filled(crop)
    # the plate spans the crop less the margin on each side, in both directions
    assert x1 == pytest.approx(256 * MARGIN[0] / (1 + 2 * MARGIN[0]), abs=1.5)
    assert x2 == pytest.approx(256 * (1 + MARGIN[0]) / (1 + 2 * MARGIN[0]), abs=1.5)
    assert y1 == pytest.approx(96 * MARGIN[1] / (1 + 2 * MARGIN[1]), abs=1.5)
    assert y2 == pytest.approx(96 * (1 + MARGIN[1]) / (1 + 2 * MARGIN[1]), abs=1.5)
    assert not (crop == PAD_VALUE).all(axis=2).any()  # nothing padded: the whole crop is picture


def test_fit_keeps_the_aspect_and_pads():
    box = (100, 100, 290, 200)
    crop, (sx, sy, _, _) = crop_plate(scene(box), box, (256, 96), fill=False)
    assert sx == sy
    x1, y1, x2, y2 = filled(crop)
    assert (x2 - x1) / (y2 - y1) == pytest.approx(1.9, rel=0.05)
    assert x2 < 200 and (crop[:, -20:] == 255).all()  # the right of a two-row plate's crop shows what is beside it


@pytest.mark.parametrize("fill", [True, False])
def test_boxes_go_to_the_crop_and_back(fill):
    img = np.zeros((300, 500, 3), np.uint8)
    _, transform = crop_plate(img, (120.5, 80.25, 330.0, 190.0), (256, 96), fill=fill)
    boxes = np.float32([[130, 90, 150, 120], [200.5, 150.25, 240, 185]])
    inside = to_crop(boxes, transform)
    assert (inside >= 0).all() and (inside[:, [0, 2]] <= 256).all() and (inside[:, [1, 3]] <= 96).all()
    assert np.allclose(to_image(inside, transform), boxes, atol=1e-3)


def test_shrinking_a_plate_averages_its_strokes_instead_of_aliasing():
    """Fine stripes (1 px black, 1 px white) shrunk to a third must come out as grey, not as random stripes."""
    img = np.full((600, 900, 3), 255, np.uint8)
    img[:, ::2] = 0
    crop, (sx, sy, _, _) = crop_plate(img, (100, 100, 760, 350), (256, 96))
    assert sx < 0.4 and sy < 0.4
    assert abs(crop.mean() - 127.5) < 10 and crop.std() < 20


@pytest.mark.parametrize("size,plate", [((320, 320), (250, 120)), ((416, 256), (400, 85))])
def test_the_detectors_training_crop_holds_whole_plates(size, plate):
    """PlateRandomCrop places its crop (w, h) around a whole plate where one fits (a plain random crop of 320 px
    rarely holds a 250 px plate whole; the quick preset's wide crop holds a one-row plate 400 px wide) and
    falls back to a plain random crop where none does."""
    from mmdet.structures.bbox import HorizontalBoxes

    from platepipe.components.mm import data as parts

    crop = parts.PlateRandomCrop(crop_size=size, allow_negative_crop=True, whole_prob=1.0)
    np.random.seed(0)
    pw, ph = plate
    for _ in range(50):
        x, y = np.random.uniform(0, 950 - pw), np.random.uniform(0, 630 - ph)
        results = dict(img=np.zeros((640, 960, 3), np.uint8),
                       gt_bboxes=HorizontalBoxes(np.float32([[x, y, x + pw, y + ph]])),
                       gt_bboxes_labels=np.array([0]), gt_ignore_flags=np.array([False]))
        out = crop(results)
        assert out["img"].shape[:2] == (size[1], size[0])
        w, h = (out["gt_bboxes"].numpy()[0, 2:] - out["gt_bboxes"].numpy()[0, :2])
        assert (w, h) == pytest.approx((pw, ph), abs=1e-3)  # not clipped: whole
    too_big = dict(img=np.zeros((640, 960, 3), np.uint8), gt_bboxes=HorizontalBoxes(np.float32([[10, 10, 600, 300]])),
                   gt_bboxes_labels=np.array([0]), gt_ignore_flags=np.array([False]))
    assert crop(too_big)["img"].shape[:2] == (size[1], size[0])


def test_the_quick_detectors_crop_holds_the_widest_one_row_plate():
    """The widest plate the data step draws (one-row: plate_width_max px, and at most plate_width_max_frac of the
    photo's width) at the quick detector's scale: the photo's long side is looked at as 640 px."""
    from platepipe.configs.model import stage_config
    from platepipe.pipeline.config import load_config

    cfg = load_config()
    det = stage_config("detector", "quick")
    crop = next(t for t in det["train_pipeline"] if t["type"] == "PlateRandomCrop")
    widest = min(cfg.data.plate_width_max * det["input_size"] / cfg.data.min_size,
                 cfg.data.plate_width_max_frac * det["input_size"])
    assert crop["crop_size"][0] >= widest


def _photo(seed=0, shape=(720, 1280)):
    """A textured photo (smooth colour plus fine noise), so that any pixel read from the wrong place shows."""
    rng = np.random.default_rng(seed)
    import cv2

    base = cv2.resize(rng.uniform(0, 255, (9, 16, 3)).astype(np.float32), shape[::-1], interpolation=cv2.INTER_CUBIC)
    return np.clip(base + rng.normal(0, 25, base.shape), 0, 255).astype(np.uint8)


def test_a_plate_region_in_memory_crops_as_the_whole_photo(tmp_path):
    """The reader's LoadPlateRegion + CropPlate give the crops and boxes that the whole photo gives (plates in the
    middle and at the edges, small plates smoothed and large ones shrunk, jittered boxes, boxes jittered past
    the region), and a region loaded once is not read from disk again."""
    import cv2

    from platepipe.components.mm import data as parts

    path = tmp_path / "photo.png"
    cv2.imwrite(str(path), _photo())
    boxes = [(600, 300, 690, 322), (0, 5, 300, 80), (1100, 650, 1280, 720), (200, 400, 602, 510), (640, 100, 730, 145)]
    load, size = parts.LoadPlateRegion(), (256, 96)
    whole = cv2.imread(str(path))
    for box in boxes:
        chars = [{"bbox": [box[0] + 5.0, box[1] + 2.0, box[0] + 15.0, box[1] + 12.0], "bbox_label": 3}]
        for trial, jitter in enumerate([0.0] + [0.08] * 12 + [0.9] * 4):
            crop = parts.CropPlate(size, jitter=jitter)
            np.random.seed(trial)
            mine = crop(load(dict(img_path=str(path), plate_bbox=list(box), instances=[dict(c) for c in chars])))
            np.random.seed(trial)
            ref = crop(dict(img=whole.copy(), plate_bbox=list(box), instances=[dict(c) for c in chars]))
            diff = np.abs(mine["img"].astype(int) - ref["img"].astype(int))
            # the same pixels, but for warpAffine's 1/32 px fixed-point positions rounding the other way now and then
            assert diff.max() <= 6 and (diff > 0).mean() < 0.05, (box, jitter, diff.max(), (diff > 0).mean())
            assert len(mine["instances"]) == len(ref["instances"])
            for a, b in zip(mine["instances"], ref["instances"]):
                assert a["bbox"] == pytest.approx(b["bbox"], abs=1e-3)
    path.rename(tmp_path / "gone.png")  # every region is in memory now: no jitter needs the photo again
    again = parts.CropPlate(size)(load(dict(img_path=str(path), plate_bbox=list(boxes[0]), instances=[])))
    assert again["img"].shape == (96, 256, 3)
    with pytest.raises(FileNotFoundError, match="cannot read image"):  # a region never loaded: the file is needed
        load(dict(img_path=str(path), plate_bbox=[10.0, 10.0, 50.0, 30.0]))


def test_a_jittered_box_past_its_region_crops_from_the_whole_photo(tmp_path):
    """A box moved far past the region kept in memory is cut from the photo read again, as it would have been."""
    import cv2

    from platepipe.components.mm import data as parts

    path = tmp_path / "photo.png"
    cv2.imwrite(str(path), _photo(1))
    box = [500.0, 300.0, 600.0, 330.0]
    loaded = parts.LoadPlateRegion(margin=0.1)(dict(img_path=str(path), plate_bbox=box))
    far = np.float32([520, 290, 700, 360])
    assert not parts._region_holds(loaded, far, (256, 96), True)
    assert parts._region_holds(loaded, np.float32(box), (256, 96), True)
    crop = parts.CropPlate((256, 96))
    mine = crop(dict(loaded, plate_bbox=list(far), instances=[]))
    ref = crop(dict(img=cv2.imread(str(path)), plate_bbox=list(far), instances=[]))
    assert np.abs(mine["img"].astype(int) - ref["img"].astype(int)).max() <= 1
