"""The data step: real rendering, real files, COCO read back with pycocotools."""

import json
import os
from pathlib import Path

import cv2
import numpy as np
import pytest
from pycocotools.coco import COCO

from platepipe.components import data
from platepipe.components.data import _make_one, generate, preview, render_plate
from platepipe.pipeline.config import settings
from platepipe.serving.labels import CLASSES, DIGITS, LETTERS
from platepipe.serving.plates import Detection, decode

SMALL = dict(min_size=320, max_size=480, plate_width_min=60, plate_width_max=200)


@pytest.fixture(scope="module")
def dataset(tmp_path_factory):
    out = tmp_path_factory.mktemp("ds") / "set"
    summary = generate(out, settings("data", n_images=24, seed=3, **SMALL), workers=2, progress=False, ood_images=4)
    return out, summary


@pytest.fixture(scope="module", params=["original", "unseen-fonts"])
def styled(request, tmp_path_factory):
    """A data set in one style alone."""
    out = tmp_path_factory.mktemp("styled") / request.param
    generate(out, settings("data", n_images=16, seed=9, styles={request.param: 1.0}, **SMALL), workers=1, progress=False)
    return out


def load_all(folder: Path):
    images, anns = {}, []
    for split in data.SPLITS:
        coco = json.loads((folder / f"{split}.json").read_text())
        images.update({im["id"]: im for im in coco["images"]})
        anns += coco["annotations"]
    return images, anns


def test_same_seed_same_bytes_whatever_the_workers(tmp_path, dataset):
    out, summary = dataset
    again = generate(tmp_path / "again", settings("data", n_images=24, seed=3, **SMALL), workers=1, progress=False)
    assert again["fingerprint"] == summary["fingerprint"]
    other = generate(tmp_path / "other", settings("data", n_images=24, seed=4, **SMALL), workers=1, progress=False)
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


def test_labels_match_the_drawn_text(dataset, styled):
    """Each plate holds exactly its 7 characters; its regions hold 2 digits + letter and 4 digits, in reading order
    (the default mix of styles, and each other style alone)."""
    for folder in (dataset[0], styled):
        _check_labels(folder)


def _check_labels(folder):
    images, anns = load_all(folder)
    names = {i + 1: c for i, c in enumerate(CLASSES)}
    plates = [a for a in anns if names[a["category_id"]].endswith("_board")]
    assert len(plates) >= 12
    for plate in plates:
        same = [a for a in anns if a["image_id"] == plate["image_id"] and _inside(a["bbox"], plate["bbox"])]
        chars = [a for a in same if names[a["category_id"]] in DIGITS + LETTERS]
        regions = {names[a["category_id"]]: a for a in same if names[a["category_id"]].endswith("_text")}
        assert len(chars) == 7 and set(regions) == {"sub_text", "main_text"}
        assert sorted(names[c["category_id"]] for c in chars) == sorted(plate["text"])
        # serving's own decoding reads the labelled boxes as the drawn text, in reading order
        (read,) = decode([Detection(names[a["category_id"]], 1.0, _xyxy(a["bbox"])) for a in [plate, *same]],
                         plate_score=1.0, char_score=1.0)
        assert read["plate"] == plate["text"] and read["type"] == names[plate["category_id"]], (plate, read)
        assert plate["text"][:2].isdigit() and plate["text"][2] in LETTERS and plate["text"][3:].isdigit()
        if names[plate["category_id"]] == "r_board":  # two rows: the region line above the serial
            assert regions["sub_text"]["bbox"][1] < regions["main_text"]["bbox"][1]


def _xyxy(b):
    return (b[0], b[1], b[0] + b[2], b[1] + b[3])


def test_character_boxes_hold_the_ink():
    """Render a plate flat and check that text-coloured pixels fall in the character boxes, tightly."""
    rng = np.random.default_rng(0)
    for kind in ("r_board", "l_board"):
        for _ in range(10):
            flat = render_plate(rng, kind, data.random_plate_text(rng), 300)
            img = flat.image.astype(np.int32)
            h, w = img.shape[:2]
            row_bg = np.median(img, axis=1)  # each row's background (the plate is shaded top to bottom)
            assert [c for c, _ in flat.chars] == list(flat.text)
            for char, (x1, y1, x2, y2) in flat.chars:
                assert 0 <= x1 < x2 <= w and 0 <= y1 < y2 <= h
                crop = img[int(y1):int(y2), int(x1):int(x2)]
                ink = np.abs(crop - row_bg[int(y1):int(y2), None]).sum(axis=2) > 60
                assert ink.mean() > 0.08, (kind, char)
                # tight: the box's outer rows and columns each touch ink
                assert ink[0].any() or ink[1].any()
                assert ink[:, 0].any() or ink[:, 1].any()


def test_every_labelled_plate_is_visible(monkeypatch):
    """Nothing drawn later (another plate's car body) covers a labelled plate: the final image holds each plate
    exactly as it was warped in (lighting switched off to compare pixels)."""
    pasted = []
    real_paste = data._paste
    monkeypatch.setattr(data, "_paste", lambda img, plate, hom, alpha: (pasted.append((plate, hom, alpha)),
                                                                     real_paste(img, plate, hom, alpha)))
    monkeypatch.setattr(data, "_photometric", lambda rng, img: img)
    # procedural scenes: no second photo blended over the image
    spec = settings("data", n_images=40, seed=5, min_size=480, max_size=640, plate_width_min=100, plate_width_max=220,
                    backgrounds="procedural")
    checked = 0
    for index in range(40):
        pasted.clear()
        img, objects, _ = data.render_image(spec, index)
        assert len(pasted) == sum(o["label"] in ("r_board", "l_board") for o in objects)
        for plate, hom, alpha in pasted:
            if alpha < 1:  # a see-through board shows what lies under it
                continue
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
    generate(tmp_path / "empty", settings("data", n_images=4, seed=1, empty_fraction=1.0, **SMALL), workers=1, progress=False)
    assert load_all(tmp_path / "empty")[1] == []


def test_user_photo_backgrounds(tmp_path):
    photos = tmp_path / "photos"
    photos.mkdir()
    for i in range(2):
        cv2.imwrite(str(photos / f"p{i}.png"), np.full((300, 400, 3), 40 + 100 * i, np.uint8))
    summary = generate(tmp_path / "out", settings("data", n_images=6, seed=2, backgrounds=str(photos), **SMALL),
                       workers=1, progress=False)
    assert summary["n_images"] == 6
    img = cv2.imread(str(tmp_path / "out" / "images" / "000000.jpg"))
    corner = img[:5, :5].reshape(-1, 3).mean(axis=0)
    assert np.all(np.abs(corner - corner.mean()) < 40)  # grey photo, not a procedural colour field


def _dies_on_the_third(job):
    """_make_one, but the worker rendering image 2 dies at once, as one the kernel kills."""
    if job[1] == 2:
        os._exit(1)
    return _make_one(job)


def test_a_rendering_process_that_dies_fails_the_step_instead_of_hanging(tmp_path, monkeypatch):
    monkeypatch.setattr(data, "_make_one", _dies_on_the_third)
    with pytest.raises(RuntimeError, match="a rendering process died"):
        generate(tmp_path / "x", settings("data", n_images=8, seed=1, **SMALL), workers=2, progress=False)
    assert not (tmp_path / "x").exists() and not list(tmp_path.glob(".x.partial-*"))


def test_bad_settings_name_the_problem(tmp_path):
    with pytest.raises(ValueError, match="backgrounds folder not found"):
        generate(tmp_path / "x", settings("data", n_images=2, backgrounds=str(tmp_path / "nope")), progress=False)
    with pytest.raises(ValueError, match="split_test must be 1, got 0.9"):
        generate(tmp_path / "x", settings("data", n_images=2, split_train=0.5, split_val=0.2, split_test=0.2), progress=False)
    with pytest.raises(ValueError, match="min_size"):
        generate(tmp_path / "x", settings("data", n_images=2, min_size=900, max_size=600), progress=False)
    (tmp_path / "empty_photos").mkdir()
    with pytest.raises(ValueError, match="no images"):
        generate(tmp_path / "y", settings("data", n_images=2, backgrounds=str(tmp_path / "empty_photos"), **SMALL),
                 workers=1, progress=False)
    assert not (tmp_path / "y").exists() and not list(tmp_path.glob(".y.partial-*"))


def test_never_writes_into_a_full_folder(tmp_path):
    (tmp_path / "full").mkdir()
    (tmp_path / "full" / "keep.txt").write_text("mine")
    with pytest.raises(FileExistsError, match="not empty"):
        generate(tmp_path / "full", settings("data", n_images=2, **SMALL), progress=False)
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


# ------------------------------------------------------------------------------------------- styles

@pytest.mark.parametrize("kind", ["r_board", "l_board"])
@pytest.mark.parametrize("size", [0, 1])
def test_original_boards_are_drawn_as_the_original_project_draws_them(kind, size):
    """At one of its own sizes, a board is pixel for pixel what the original project's draw_board.py draws: a
    flat rectangle in one of its four colours, cv2.putText's black Hershey Duplex lines at its origins, scales
    and thicknesses (the rectangle spans centre +- (width, height)); and each character's box holds its ink."""
    board_w, board_h, lines = data.ORIGINAL_BOARDS[kind][size]
    text = "38D4831"
    flat = data.render_original(np.random.default_rng(size), kind, text, board_w, board=size)
    assert flat.image.shape[:2] == (board_h, board_w)
    colour = tuple(int(c) for c in flat.image[1, board_w // 2])
    assert colour in data.ORIGINAL_COLOURS
    expected = np.full((board_h, board_w, 3), colour, np.uint8)
    strings = ["38 D", "4831"] if kind == "r_board" else [" 38 D  4831"]
    for string, (x, y, scale, thickness) in zip(strings, lines):
        cv2.putText(expected, string, (x, y), color=(0, 0, 0), fontFace=2, fontScale=scale, thickness=thickness)
    assert np.array_equal(flat.image, expected)
    assert [c for c, _ in flat.chars] == list(text)
    ink = (expected == 0).all(axis=2)
    for char, (x1, y1, x2, y2) in flat.chars:
        box = ink[int(y1):int(y2), int(x1):int(x2)]
        assert box.mean() > 0.1 and box[0].any() and box[-1].any() and box[:, 0].any() and box[:, -1].any(), char
    covered = np.zeros_like(ink)
    for _, (x1, y1, x2, y2) in flat.chars:
        covered[int(y1):int(y2), int(x1):int(x2)] = True
    assert not (ink & ~covered).any()  # every inked pixel is inside some character's box
    # the boards have no frame and no bolts: the edges are the plain colour
    assert (flat.image[0] == colour).all() and (flat.image[:, -1] == colour).all()


def test_original_boards_at_any_width_keep_their_proportions_and_labels():
    rng = np.random.default_rng(1)
    for kind, aspect in (("r_board", 2.0), ("l_board", 5.25)):
        for width in (60, 90, 150, 260, 500, 700):
            flat = data.render_original(rng, kind, "12A3456", width)
            h, w = flat.image.shape[:2]
            assert w == width and abs(w / h - aspect) < 0.35, (kind, width, w / h)
            assert "".join(c for c, _ in flat.chars) == "12A3456"
            xs = [b[0] for _, b in flat.chars]
            if kind == "l_board":
                assert xs == sorted(xs)  # one line, in reading order
            else:
                assert xs[:3] == sorted(xs[:3]) and xs[3:] == sorted(xs[3:])
                assert max(b[3] for _, b in flat.chars[:3]) < min(b[1] for _, b in flat.chars[3:])  # top over bottom
            assert 0.0 < flat.alpha <= 1.0


def test_unseen_fonts_are_not_the_training_fonts():
    seen = {f for _, f in data.font_choices()}
    unseen = {f for _, f in data.font_choices(unseen=True)}
    assert len(unseen) >= 4 and not seen & unseen
    assert {Path(f).name for f in unseen if isinstance(f, str)} == set(data.UNSEEN_TTF)


def test_shipped_photos_split_into_pools_that_never_meet():
    photos = data.shipped_photos()
    assert len(photos) == len(data.SHIPPED_PHOTOS)  # every listed photo is installed
    for path in photos:
        img = cv2.imread(path)
        assert img is not None and min(img.shape[:2]) >= 160
    train, held = data.photo_pool(photos, "train"), data.photo_pool(photos, "held-out")
    assert set(train) | set(held) == set(photos) and not set(train) & set(held)
    assert len(held) == -(-len(photos) // 5)
    assert data.photo_pool(list(reversed(photos)), "held-out") == tuple(reversed(held))  # by name, not by order


def test_out_of_distribution_sets_use_other_seeds_and_held_out_photos(dataset):
    out, summary = dataset
    train_photos = set(summary["backgrounds"]["photos"])
    assert summary["backgrounds"]["pool"] == "train" and train_photos
    assert set(summary["ood"]) == set(data.OOD_SETS)
    for name, ood in summary["ood"].items():
        folder = out / "ood" / name
        saved = json.loads((folder / "dataset.json").read_text())
        assert saved["about"] and saved["seed"] != summary["seed"] and saved["n_images"] == 4
        assert saved["backgrounds"]["pool"] == "held-out" and not set(saved["backgrounds"]["photos"]) & train_photos
        assert len(json.loads((folder / "test.json").read_text())["images"]) == 4
        assert json.loads((folder / "train.json").read_text())["images"] == []
    assert summary["ood"]["original"]["images_by_style"] == {"original": 4}
    assert summary["ood"]["unseen-fonts"]["images_by_style"] == {"unseen-fonts": 4}
    assert summary["ood"]["plate-free"]["plates"] == 0
    assert "unseen-fonts" not in summary["images_by_style"]  # the held-out style never reaches training
    # the main data set's fingerprint covers its own files: the same whether or not the sets are rendered
    assert summary["fingerprint"] == data.fingerprint(out)


def test_see_through_boards_let_the_photo_show():
    img = np.zeros((40, 60, 3), np.uint8)
    board = np.full((10, 20, 3), 200, np.uint8)
    hom = np.array([[1, 0, 20], [0, 1, 15], [0, 0, 1]], np.float64)
    data._paste(img, board, hom, alpha=0.5)
    assert abs(int(img[20, 30, 0]) - 100) <= 1 and img[2, 2, 0] == 0


def test_camera_looks_night_glare_and_low_contrast():
    """Each look does what it says, within readable bounds, and each comes up about as often as it should."""
    scene = np.full((120, 160, 3), 128, np.float32)
    scene[:, 80:] = 40
    for seed in range(20):
        rng = np.random.default_rng(seed)
        night = data._apply_look(rng, scene.copy(), "night")
        assert 0.2 * 84 < night.mean() <= 0.5 * 84 + 0.01
        flat = data._apply_look(rng, scene.copy(), "low-contrast")
        assert 0.5 * 88 - 0.01 <= flat[:, :60].mean() - flat[:, 100:].mean() <= 0.75 * 88 + 0.01
        assert abs(flat.mean() - scene.mean()) < 0.01  # squeezed about the mean, not darkened
        glare = data._apply_look(rng, scene.copy(), "glare") - scene
        assert 80 <= glare.max() <= 200 and glare.min() >= 0 and np.median(glare) < glare.max()
        assert np.array_equal(data._apply_look(rng, scene.copy(), "day"), scene)
    rng = np.random.default_rng(0)
    looks = [data._look(rng) for _ in range(4000)]
    for name, share in data.LOOKS:
        assert abs(looks.count(name) / 4000 - share) < 0.02, name


def test_preview_shows_every_style_and_every_set(dataset, tmp_path):
    out, summary = dataset
    picks = data._by_style(out / "train.json", 4)
    styles = {info["style"] for info, _, _ in picks}
    assert styles == {s for s, n in summary["images_by_style"].items() if n and s}  # every style in the split
    png = preview(out, tmp_path / "sheet.png", count=4)
    sheet = cv2.imread(str(png))
    assert sheet.shape[0] >= (4 + len(data.OOD_SETS)) * 326  # a row for each pick and for each set


def test_bad_styles_are_named():
    with pytest.raises(ValueError, match="data.styles.fancy: unknown style"):
        settings("data", n_images=1, styles={"fancy": 1.0})
    with pytest.raises(ValueError, match="at least one style a weight above 0"):
        settings("data", n_images=1, styles={"original": 0.0})


def test_out_of_distribution_sets_beside_a_users_data_set(tmp_path):
    """A labelled set of the user's gets the same sets beside it, written whole, never over existing ones."""
    (tmp_path / "mine").mkdir()
    summary = data.write_ood_sets(tmp_path / "mine", settings("data", **SMALL), 2, workers=1, progress=False)
    assert set(summary) == set(data.OOD_SETS)
    assert all((tmp_path / "mine" / "ood" / name / "test.json").is_file() for name in data.OOD_SETS)
    assert [p.name for p in (tmp_path / "mine").iterdir()] == ["ood"]  # nothing half-written left beside it
    with pytest.raises(FileExistsError, match="delete it to render the sets again"):
        data.write_ood_sets(tmp_path / "mine", settings("data", **SMALL), 2, workers=1, progress=False)
