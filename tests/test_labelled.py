"""A user's labelled plates (labelme, COCO, platepipe layout) from a folder or gs:// (real fake-gcs-server)."""

import json
from pathlib import Path

import cv2
import numpy as np
import pytest

from platepipe.components import labelled
from platepipe.components.data import generate
from platepipe.components.gcs import GcsError, client, download
from platepipe.pipeline.config import settings
from platepipe.serving.labels import CLASSES


def labelme_folder(root: Path, n: int = 6) -> Path:
    root.mkdir(parents=True)
    for i in range(n):
        cv2.imwrite(str(root / f"car{i}.jpg"), np.full((200, 300, 3), 90, np.uint8))
        shapes = [{"label": "l_board", "points": [[50, 80], [250, 120]], "shape_type": "rectangle"},
                  {"label": "3", "points": [[60, 85], [70, 85], [70, 115], [60, 115]], "shape_type": "polygon"}]
        (root / f"car{i}.json").write_text(json.dumps({"shapes": shapes, "imagePath": f"car{i}.jpg",
                                                       "imageWidth": 300, "imageHeight": 200}))
    return root


def test_labelme_becomes_coco(tmp_path):
    out = labelled.prepare(str(labelme_folder(tmp_path / "lm")), tmp_path / "set", seed=1, split=(0.5, 0.25, 0.25))
    images, anns = [], []
    for split in ("train", "val", "test"):
        coco = json.loads((out / f"{split}.json").read_text())
        assert [c["name"] for c in coco["categories"]] == list(CLASSES)
        images += coco["images"]
        anns += coco["annotations"]
    assert len(images) == 6 and len(anns) == 12
    plate = next(a for a in anns if a["category_id"] == CLASSES.index("l_board") + 1)
    assert plate["bbox"] == [50, 80, 200, 40]
    digit = next(a for a in anns if a["category_id"] == CLASSES.index("3") + 1)
    assert digit["bbox"] == [60, 85, 10, 30]
    assert all((out / im["file_name"]).is_file() for im in images)
    assert json.loads((out / "dataset.json").read_text())["format"] == "labelme"
    assert (tmp_path / "lm" / "car0.jpg").exists()  # the user's files are copied, never moved


def test_labelme_with_unknown_label_names_it(tmp_path):
    folder = labelme_folder(tmp_path / "lm", 1)
    doc = json.loads((folder / "car0.json").read_text())
    doc["shapes"][1]["label"] = "가"
    (folder / "car0.json").write_text(json.dumps(doc))
    with pytest.raises(ValueError, match="shape 1 has label '가'"):
        labelled.prepare(str(folder), tmp_path / "set")
    assert not (tmp_path / "set").exists() and not (tmp_path / ".set.partial").exists()


def test_single_coco_file_is_split(tmp_path):
    synth = tmp_path / "synth"
    generate(synth, settings("data", n_images=8, seed=2, min_size=320, max_size=400), workers=1, progress=False)
    merged = json.loads((synth / "train.json").read_text())
    for split in ("val", "test"):
        more = json.loads((synth / f"{split}.json").read_text())
        merged["images"] += more["images"]
        merged["annotations"] += more["annotations"]
    for ann in merged["annotations"]:  # ids of the user's own choosing
        ann["category_id"] += 100
    for cat in merged["categories"]:
        cat["id"] += 100
    user = tmp_path / "user"
    user.mkdir()
    (user / "images").symlink_to(synth / "images")
    (user / "labels.json").write_text(json.dumps(merged))
    out = labelled.prepare(str(user), tmp_path / "set")
    total = sum(len(json.loads((out / f"{s}.json").read_text())["annotations"]) for s in ("train", "val", "test"))
    assert total == len(merged["annotations"])
    train = json.loads((out / "train.json").read_text())
    assert max(a["category_id"] for a in train["annotations"]) <= len(CLASSES)


def test_missing_or_unlabelled_folder(tmp_path):
    with pytest.raises(FileNotFoundError, match="labelled data folder not found"):
        labelled.prepare(str(tmp_path / "nope"), tmp_path / "set")
    (tmp_path / "empty").mkdir()
    with pytest.raises(ValueError, match="no COCO file or labelme JSON"):
        labelled.prepare(str(tmp_path / "empty"), tmp_path / "set")


def test_labelled_set_from_gcs(gcs, tmp_path):
    folder = labelme_folder(tmp_path / "lm", 3)
    bucket = client().create_bucket("plates")
    for f in folder.iterdir():
        bucket.blob(f"sets/v1/{f.name}").upload_from_filename(str(f))
    out = labelled.prepare("gs://plates/sets/v1", tmp_path / "set")
    n = sum(len(json.loads((out / f"{s}.json").read_text())["images"]) for s in ("train", "val", "test"))
    assert n == 3 and not (out / "download").exists()


def test_gcs_errors_are_one_sentence(gcs, tmp_path):
    with pytest.raises(GcsError, match="not found in gs://nobucket"):
        download("gs://nobucket/a/pipeline.pth", tmp_path / "x.pth")
    assert not (tmp_path / "x.pth").exists() and not (tmp_path / "x.pth.partial").exists()
    client().create_bucket("empty")
    with pytest.raises(GcsError, match="nothing found under gs://empty/sets"):
        labelled.prepare("gs://empty/sets", tmp_path / "set")
    with pytest.raises(ValueError, match="not a gs:// address"):
        download("s3://x/y", tmp_path / "y")
