"""Plate decoding on hand-built detections."""

import json
import math

import pytest

from platepipe.serving import plates as decoding
from platepipe.serving.plates import Detection, detections_from_arrays, format_plate

READ_SCORE = 0.25


def decode(detections, plate_score=0.3, char_score=0.3, **kwargs):
    """serving.plates.decode at the scores these hand-built detections are made against."""
    return decoding.decode(detections, plate_score=plate_score, char_score=char_score, **kwargs)


def plate_dets(text, kind="l_board", x=100.0, y=100.0, w=200.0, angle_deg=0.0, plate_score=0.9, char_score=0.95,
               regions=True):
    """Detections for one plate drawn at (x, y) w wide; characters in reading order, optionally tilted."""
    h = w / (4.7 if kind == "l_board" else 2.0)
    dets = [Detection(kind, plate_score, (x, y, x + w, y + h))]
    slope = math.tan(math.radians(angle_deg))
    if kind == "l_board":
        rows = [(text, y + h * 0.2, h * 0.6, x + w * 0.06, w * 0.12)]
    else:
        rows = [(text[:3], y + h * 0.08, h * 0.3, x + w * 0.3, w * 0.13), (text[3:], y + h * 0.45, h * 0.48, x + w * 0.08, w * 0.21)]
    boxes = []
    for row, top, ch, left, step in rows:
        for i, c in enumerate(row):
            cx = left + i * step + (step * 0.4 if kind == "l_board" and i >= 3 else 0)
            cy = top + (cx - x) * slope
            boxes.append((c, (cx, cy, cx + step * 0.8, cy + ch)))
    dets += [Detection(c, char_score, b) for c, b in boxes]
    if regions:
        for name, part in (("sub_text", boxes[:3]), ("main_text", boxes[3:])):
            xs = [b[0] for _, b in part] + [b[2] for _, b in part]
            ys = [b[1] for _, b in part] + [b[3] for _, b in part]
            dets.append(Detection(name, 0.9, (min(xs) - 1, min(ys) - 1, max(xs) + 1, max(ys) + 1)))
    return dets


def reads(plates):
    return [(p["type"], p["plate"]) for p in plates]


@pytest.mark.parametrize("kind", ["l_board", "r_board"])
@pytest.mark.parametrize("regions", [True, False])
def test_both_layouts_read_in_order(kind, regions):
    dets = plate_dets("38D4831", kind, regions=regions)
    plates = decode(list(reversed(dets)))  # order of detections does not matter
    assert reads(plates) == [(kind, "38D4831")]
    p = plates[0]
    assert p["sub_text"] == ["3", "8", "D"] and p["main_text"] == ["4", "8", "3", "1"]
    assert p["region"] == "38" and p["class"] == "D" and p["serial"] == "4831" and p["valid"]
    x1, y1, x2, y2 = dets[0].bbox
    assert p["board_center_p"] == [round((x1 + x2) / 2), round((y1 + y2) / 2)]
    assert p["width"] == round(x2 - x1) and p["height"] == round(y2 - y1)
    assert p["score"] == pytest.approx(0.9 * 0.95, abs=1e-4)


@pytest.mark.parametrize("angle", [-6, 6])
@pytest.mark.parametrize("kind", ["l_board", "r_board"])
def test_mild_rotation(kind, angle):
    assert reads(decode(plate_dets("12A3456", kind, angle_deg=angle, regions=False))) == [(kind, "12A3456")]


def test_missing_character_is_dropped_or_flagged():
    dets = [d for d in plate_dets("38D4831") if not (d.label == "3" and d.bbox[0] > 150)]
    assert decode(dets) == []
    partial = decode(dets, keep_partial=True)
    assert len(partial) == 1 and partial[0]["valid"] is False
    assert partial[0]["sub_text"] == ["3", "8", "D"] and partial[0]["main_text"][3] is None
    json.dumps(partial)


def test_duplicate_character_keeps_the_surer_one():
    dets = plate_dets("38D4831")
    four = next(d for d in dets if d.label == "4")
    x1, y1, x2, y2 = four.bbox
    dets.append(Detection("9", 0.5, (x1 + 1, y1, x2 + 1, y2)))  # same spot, less sure
    assert reads(decode(dets)) == [("l_board", "38D4831")]


def test_wrong_kind_in_a_position_is_partial():
    dets = [Detection("0", d.score, d.bbox) if d.label == "D" else d for d in plate_dets("38D4831")]
    assert decode(dets) == []
    assert decode(dets, keep_partial=True)[0]["sub_text"] == ["3", "8", None]


def test_two_plates_side_by_side_keep_their_own_characters():
    dets = plate_dets("11A1111", x=50) + plate_dets("22B2222", "r_board", x=400, w=150, plate_score=0.8)
    assert sorted(reads(decode(dets))) == [("l_board", "11A1111"), ("r_board", "22B2222")]


def test_overlapping_plate_boxes_of_both_types_are_one_plate():
    dets = plate_dets("38D4831")
    x1, y1, x2, y2 = dets[0].bbox
    dets.append(Detection("r_board", 0.6, (x1 + 2, y1, x2 - 2, y2 + 2)))
    plates = decode(dets)
    assert reads(plates) == [("l_board", "38D4831")]


def test_characters_outside_plates_and_low_scores_are_ignored():
    dets = plate_dets("38D4831") + [Detection("7", 0.99, (600, 600, 620, 640))]
    dets += [Detection("l_board", 0.1, (700, 100, 900, 140))]  # below plate_score
    assert reads(decode(dets)) == [("l_board", "38D4831")]
    weak = plate_dets("38D4831", char_score=0.2)
    assert decode(weak) == [] and reads(decode(weak, char_score=0.1)) == [("l_board", "38D4831")]


def test_best_plate_first():
    dets = plate_dets("11A1111", x=50, plate_score=0.5) + plate_dets("22B2222", x=400, plate_score=0.95)
    assert [p["plate"] for p in decode(dets)] == ["22B2222", "11A1111"]


class FakeTensor:
    def __init__(self, data):
        self.data = data

    def tolist(self):
        return self.data


def test_detections_from_arrays():
    boxes = [[0, 0, 100, 30], [5, 5, 15, 25]]
    from_lists = detections_from_arrays(boxes, [0.9, 0.8], [1, 4])
    from_tensors = detections_from_arrays(FakeTensor(boxes), FakeTensor([0.9, 0.8]), FakeTensor([1, 4]))
    assert from_lists == from_tensors
    assert from_lists[0] == Detection("l_board", 0.9, (0.0, 0.0, 100.0, 30.0))
    assert from_lists[1].label == "0"


def test_format_plate_draws_both_layouts():
    one = format_plate(decode(plate_dets("38D4831"))[0])
    assert "38D 4831" in one and one.splitlines()[0].startswith("┌") and "l_board" in one
    two = format_plate(decode(plate_dets("38D4831", "r_board"))[0]).splitlines()
    assert "38D" in two[1] and "4831" in two[2] and two[3].startswith("└")
    partial = decode([d for d in plate_dets("38D4831") if d.label != "1"], keep_partial=True)[0]
    assert "?" in format_plate(partial) and "(partial)" in format_plate(partial)


def test_only_whole_and_sure_reads_are_reported():
    from platepipe.serving.reader import reported
    sure = decode(plate_dets("38D4831", x=100))
    unsure = decode(plate_dets("12A3456", x=400, plate_score=0.45, char_score=0.5))  # 0.45 x 0.5 < 0.25
    partial = decode(plate_dets("38D4831", x=700, regions=False)[:-1], keep_partial=True)  # a character missing
    assert unsure[0]["valid"] and unsure[0]["score"] < READ_SCORE <= sure[0]["score"]
    assert not partial[0]["valid"]
    assert reads(reported(sure + unsure + partial, READ_SCORE)) == [("l_board", "38D4831")]
    assert reads(reported(sure + unsure + partial, read_score=0.0)) == [("l_board", "38D4831"), ("l_board", "12A3456")]
