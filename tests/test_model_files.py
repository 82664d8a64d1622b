"""Bad pipeline.pth files are refused whole, in one line, by every command that takes a model, and nothing is
written on refusal: empty, truncated, corrupted (bytes flipped inside the weights), wrong-shaped and foreign."""

from __future__ import annotations

import copy
import subprocess
import sys
from pathlib import Path

import pytest

from platepipe.components.train import train
from platepipe.pipeline.config import settings
from platepipe.serving.reader import check_pipeline, load_pipeline, weights_digest

PLATEPIPE = Path(sys.executable).with_name("platepipe")

pytestmark = pytest.mark.timeout(600)


@pytest.fixture(scope="module")
def good(data_dir, tmp_path_factory):
    return train(data_dir, tmp_path_factory.mktemp("good") / "train",
                 settings("model", preset="tiny"), settings("train", max_iters=2, val_interval=2, workers=0))


def _flip_inside_the_weights(path: Path) -> bytes:
    """The file with 4 KiB of its largest tensor storage inverted (torch.save stores each one uncompressed in
    its zip archive: the zip's own CRC is not checked on load)."""
    import struct
    import zipfile

    data = path.read_bytes()
    with zipfile.ZipFile(path) as z:
        largest = max((i for i in z.infolist() if "/data/" in i.filename), key=lambda i: i.file_size)
    name_len, extra_len = struct.unpack("<HH", data[largest.header_offset + 26:largest.header_offset + 30])
    start = largest.header_offset + 30 + name_len + extra_len + largest.file_size // 2 - 2048
    return data[:start] + bytes(b ^ 0xFF for b in data[start:start + 4096]) + data[start + 4096:]


@pytest.fixture(scope="module")
def bad(good, tmp_path_factory):
    import torch

    root = tmp_path_factory.mktemp("bad")
    data = good.read_bytes()
    payload = torch.load(good, map_location="cpu", weights_only=True)
    files = {"empty": b"", "truncated": data[: len(data) // 2], "corrupted": _flip_inside_the_weights(good)}
    for name, content in files.items():
        (root / f"{name}.pth").write_bytes(content)
    # the detector's config says wider layers than its weights have; the digest is right for what is there
    wrong = copy.deepcopy(payload)
    wrong["detector"]["config"]["model"]["backbone"]["widen_factor"] = 0.25
    wrong["digest"] = weights_digest(wrong)
    torch.save(wrong, root / "wrong-shapes.pth")
    torch.save({"weights": [1, 2, 3]}, root / "foreign.pth")
    (root / "foreign-bytes.pth").write_bytes(b"\x89PNG\r\n\x1a\n" + b"\x00" * 100)
    return {path.stem: path for path in sorted(root.iterdir())}


WORDS = {"empty": "not a loadable pipeline.pth", "truncated": "not a loadable pipeline.pth",
         "corrupted": "is corrupted", "wrong-shapes": "do not fit its config", "foreign": "not a platepipe pipeline.pth",
         "foreign-bytes": "not a loadable pipeline.pth"}


def test_a_good_file_passes_and_carries_its_digest(good):
    payload = check_pipeline(good)
    assert payload["digest"] == weights_digest(payload) and len(payload["digest"]) == 64


@pytest.mark.parametrize("kind", sorted(WORDS))
def test_each_bad_file_is_one_clear_line_everywhere_and_nothing_is_written(bad, data_dir, tmp_path, kind):
    path = bad[kind]
    with pytest.raises((ValueError, FileNotFoundError), match=WORDS[kind]):
        check_pipeline(path)
    image = next((data_dir / "images").iterdir())
    commands = {
        "predict": ["predict", "--model", str(path), str(image)],
        "archive": ["archive", "--model", str(path), "--out", str(tmp_path / "layout")],
        "train --model": ["train", "--model", str(path), "--out", str(tmp_path / "fetched")],
        "evaluate": ["evaluate", "--model", str(path), "--data", str(data_dir), "--out", str(tmp_path / "eval")],
    }
    for what, argv in commands.items():
        done = subprocess.run([str(PLATEPIPE), *argv], capture_output=True, text=True, timeout=300)
        err = done.stderr.strip()
        assert done.returncode == 2, (what, done.returncode, err[-1500:])
        assert "Traceback" not in err and WORDS[kind] in err, (what, err[-1500:])
        assert len([line for line in err.splitlines() if "error" in line]) == 1, (what, err)
    assert not (tmp_path / "layout").exists() and not (tmp_path / "fetched").exists()
    assert not (tmp_path / "eval").exists()


def test_a_valid_file_with_a_changed_config_is_caught_by_the_digest(good, tmp_path):
    import torch

    payload = torch.load(good, map_location="cpu", weights_only=True)
    payload["reader"]["config"]["crop_size"] = [64, 24]
    torch.save(payload, tmp_path / "edited.pth")
    with pytest.raises(ValueError, match="is corrupted"):
        load_pipeline(tmp_path / "edited.pth")
