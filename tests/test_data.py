"""The data step: real rendering, real files, COCO read back with pycocotools."""

import json
from pathlib import Path

import cv2
import numpy as np
import pytest
from pycocotools.coco import COCO

from components import data
from components.data import DataSpec, generate, preview, render_plate
from serving.labels import CLASSES, DIGITS, LETTERS

SMALL = dict(min_size=320, max_size=480, plate_width_min=60, plate_width_max=200)


@pytest.fixture(scope="module")
def dataset(tmp_path_factory):
    out = tmp_path_factory.mktemp("ds") / "set"
    summary = generate(out, DataSpec(n_images=24, seed=3, **SMALL), workers=2, progress=False)
    return out, summary


def load_all(folder: Path):
    images, anns = {}, []
    for split in data.SPLITS:
        coco = json.loads((folder / f"{split}.json").read_text())
        images.update({im["id"]: im for im in coco["images"]})
        anns += coco["annotations"]
    return images, anns


def test_same_seed_same_bytes_whatever_the_workers(tmp_path, dataset):
    out, summary = dataset
    again = generate(tmp_path / "again", DataSpec(n_images=24, seed=3, **SMALL), workers=1, progress=False)
    assert again["fingerprint"] == summary["fingerprint"]
    other = generate(tmp_path / "other", DataSpec(n_images=24, seed=4, **SMALL), workers=1, progress=False)
    assert other["fingerprint"] != summary["fingerprint"]


def test_splits_partition_the_images(dataset):
    out, summary = dataset
    ids = []
    for split in data.SPLITS:
        ids += [im["id"] for im in json.loads((out / f"{split}.json").read_text())["images"]]
    assert sorted(ids) == list(range(1, 25))
    assert sum(summary["splits"].values()) == 24 and summary["splits"]["train"] > summary["splits"]["test"]
    assert len(list((out / "images").iterdir())) == 24
    assert not list(out.parent.glob(".set.partial-*"))


def test_every_box_inside_its_image_and_not_empty(dataset):
    images, anns = load_all(dataset[0])
    assert anns
    for ann in anns:
        im = images[ann["image_id"]]
        x, y, w, h = ann["bbox"]
        assert w > 1 and h > 1, ann
        assert x >= 0 and y >= 0 and x + w <= im["width"] + 0.01 and y + h <= im["height"] + 0.01, ann
        real = cv2.imread(str(dataset[0] / im["file_name"]))
        assert real.shape[:2] == (im["height"], im["width"])


def _inside(inner, outer, slack=1.0):
    return (inner[0] >= outer[0] - slack and inner[1] >= outer[1] - slack
            and inner[0] + inner[2] <= outer[0] + outer[2] + slack and inner[1] + inner[3] <= outer[1] + outer[3] + slack)


def test_labels_match_the_drawn_text(dataset):
    """Each plate holds exactly its 7 characters; its regions hold 2 digits + letter and 4 digits, in reading order."""
    images, anns = load_all(dataset[0])
    names = {i + 1: c for i, c in enumerate(CLASSES)}
    plates = [a for a in anns if names[a["category_id"]].endswith("_board")]
    assert len(plates) >= 15
    for plate in plates:
        same = [a for a in anns if a["image_id"] == plate["image_id"] and _inside(a["bbox"], plate["bbox"])]
        chars = [a for a in same if names[a["category_id"]] in DIGITS + LETTERS]
        regions = {names[a["category_id"]]: a for a in same if names[a["category_id"]].endswith("_text")}
        assert len(chars) == 7 and set(regions) == {"sub_text", "main_text"}
        read = {}
        for region, want in (("sub_text", plate["text"][:3]), ("main_text", plate["text"][3:])):
            box = regions[region]["bbox"]
            inside = [c for c in chars if _inside(c["bbox"], box, slack=2)]
            inside.sort(key=lambda c: c["bbox"][0])
            read[region] = "".join(names[c["category_id"]] for c in inside)
            assert read[region] == want, (plate, read)
        assert read["sub_text"][:2].isdigit() and read["sub_text"][2] in LETTERS and read["main_text"].isdigit()
        if names[plate["category_id"]] == "r_board":  # two rows: the region line above the serial
            assert regions["sub_text"]["bbox"][1] < regions["main_text"]["bbox"][1]


def test_character_boxes_hold_the_ink():
    """Render a plate flat and check that text-coloured pixels fall in the character boxes, tightly."""
    rng = np.random.default_rng(0)
    for kind in ("r_board", "l_board"):
        for _ in range(10):
            flat = render_plate(rng, kind, data.random_plate_text(rng), 300)
            img = flat.image.astype(np.int32)
            h, w = img.shape[:2]
            centre_bg = np.median(img[h // 2 - 2:h // 2 + 2, 1:4].reshape(-1, 3), axis=0)
            assert [c for c, _ in flat.chars] == list(flat.text)
            for char, (x1, y1, x2, y2) in flat.chars:
                assert 0 <= x1 < x2 <= w and 0 <= y1 < y2 <= h
                crop = img[int(y1):int(y2), int(x1):int(x2)]
                ink = np.abs(crop - centre_bg).sum(axis=2) > 60
                assert ink.mean() > 0.08, (kind, char)
                # tight: the box's outer rows and columns each touch ink
                assert ink[0].any() or ink[1].any()
                assert ink[:, 0].any() or ink[:, 1].any()


def test_every_labelled_plate_is_visible(monkeypatch):
    """Nothing drawn later (another plate's car body) covers a labelled plate: the final image holds each plate
    exactly as it was warped in (lighting switched off to compare pixels)."""
    pasted = []
    real_paste = data._paste
    monkeypatch.setattr(data, "_paste", lambda img, plate, hom: (pasted.append((plate, hom)), real_paste(img, plate, hom)))
    monkeypatch.setattr(data, "_photometric", lambda rng, img: img)
    spec = DataSpec(n_images=40, seed=5, min_size=480, max_size=640, plate_width_min=100, plate_width_max=220)
    checked = 0
    for index in range(40):
        pasted.clear()
        img, objects = data.render_image(spec, index)
        assert len(pasted) == sum(o["label"] in ("r_board", "l_board") for o in objects)
        for plate, hom in pasted:
            h, w = img.shape[:2]
            alone = cv2.warpPerspective(plate, hom, (w, h), flags=cv2.INTER_LINEAR)
            inside = cv2.erode(cv2.warpPerspective(np.full(plate.shape[:2], 255, np.uint8), hom, (w, h)),
                               np.ones((5, 5), np.uint8)) == 255
            diff = np.abs(img.astype(np.int32) - alone.astype(np.int32)).max(axis=2)[inside]
            assert (diff > 40).mean() < 0.01, f"image {index}: a labelled plate is painted over"
            checked += 1
    assert checked > 50  # several images hold two or three plates


def test_coco_loads_with_pycocotools(dataset):
    coco = COCO(str(dataset[0] / "train.json"))
    assert [coco.cats[i]["name"] for i in sorted(coco.cats)] == list(CLASSES)
    ann_ids = coco.getAnnIds()
    assert ann_ids and all(coco.anns[i]["area"] > 0 for i in ann_ids)
    assert coco.getImgIds(catIds=[1]) or coco.getImgIds(catIds=[2])


def test_plate_free_images_have_no_annotations(tmp_path):
    generate(tmp_path / "empty", DataSpec(n_images=4, seed=1, empty_fraction=1.0, **SMALL), workers=1, progress=False)
    assert load_all(tmp_path / "empty")[1] == []


def test_user_photo_backgrounds(tmp_path):
    photos = tmp_path / "photos"
    photos.mkdir()
    for i in range(2):
        cv2.imwrite(str(photos / f"p{i}.png"), np.full((300, 400, 3), 40 + 100 * i, np.uint8))
    summary = generate(tmp_path / "out", DataSpec(n_images=6, seed=2, backgrounds=str(photos), **SMALL),
                       workers=1, progress=False)
    assert summary["n_images"] == 6
    img = cv2.imread(str(tmp_path / "out" / "images" / "000000.jpg"))
    corner = img[:5, :5].reshape(-1, 3).mean(axis=0)
    assert np.all(np.abs(corner - corner.mean()) < 40)  # grey photo, not a procedural colour field


def test_bad_settings_name_the_problem(tmp_path):
    with pytest.raises(ValueError, match="backgrounds folder not found"):
        generate(tmp_path / "x", DataSpec(n_images=2, backgrounds=str(tmp_path / "nope")), progress=False)
    with pytest.raises(ValueError, match="split must be three fractions"):
        generate(tmp_path / "x", DataSpec(n_images=2, split=(0.5, 0.2, 0.2)), progress=False)
    with pytest.raises(ValueError, match="min_size <= max_size"):
        generate(tmp_path / "x", DataSpec(n_images=2, min_size=900, max_size=600), progress=False)
    (tmp_path / "empty_photos").mkdir()
    with pytest.raises(ValueError, match="no images"):
        generate(tmp_path / "y", DataSpec(n_images=2, backgrounds=str(tmp_path / "empty_photos"), **SMALL),
                 workers=1, progress=False)
    assert not (tmp_path / "y").exists() and not list(tmp_path.glob(".y.partial-*"))


def test_never_writes_into_a_full_folder(tmp_path):
    (tmp_path / "full").mkdir()
    (tmp_path / "full" / "keep.txt").write_text("mine")
    with pytest.raises(FileExistsError, match="not empty"):
        generate(tmp_path / "full", DataSpec(n_images=2, **SMALL), progress=False)
    assert (tmp_path / "full" / "keep.txt").read_text() == "mine"


def test_preview_sheet(dataset, tmp_path):
    png = preview(dataset[0], tmp_path / "sheet.png", count=4)
    sheet = cv2.imread(str(png))
    assert sheet is not None and sheet.shape[0] >= 4 * 300
    # boxes are drawn: the plate green appears on the sheet
    green = (sheet[..., 1] > 200) & (sheet[..., 0] < 90) & (sheet[..., 2] < 90)
    assert green.sum() > 50


def test_lighting_and_noise_follow_the_image_seed():
    """The lighting step draws its noise from the image's own seed (OpenCV's generator, seeded from it): the
    same image whatever OpenCV drew before; noise of a few grey levels on some images, none on others."""
    flat = np.full((120, 160, 3), 128, np.uint8)
    spreads = []
    for seed in range(16):
        first = data._photometric(np.random.default_rng(seed), flat)
        cv2.randu(np.empty((50, 50), np.float32), 0, 1)  # OpenCV's own generator moves on
        again = data._photometric(np.random.default_rng(seed), flat)
        assert np.array_equal(first, again), seed
        # the lighting field is smooth: what is left after a wide blur is the noise
        residual = first.astype(np.float32) - cv2.GaussianBlur(first, (0, 0), 8).astype(np.float32)
        spreads.append(float(residual[20:-20, 20:-20].std()))
    assert max(spreads) < 12 and min(spreads) < 0.8 and sorted(spreads)[-3] > 1.5, spreads  # some noisy, some not
