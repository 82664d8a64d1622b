"""The smoke test step against a loopback stub that reads plates perfectly from the labels of the images it
receives (looked up by their bytes), with one fault injected at a time; user images YAML; the CLI; and
once against a real TorchServe with a tiny (useless) model, which must fail naming the missed plates."""

from __future__ import annotations

import dataclasses
import hashlib
import html
import io
import json
import re
from pathlib import Path

import pytest
from PIL import Image
from stubs import Stub

from platepipe.components import smoke_test as st
from platepipe.pipeline.cli import main
from platepipe.components import client

N = 3  # synthetic images with plates (plus one plate-free)
SEED = st.DEFAULT_SEED  # what the CLI uses


def _sha(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


def perfect(truth: dict, size: tuple[int, int]) -> dict:
    """What the reader answers for a plate it reads right (serving.plates' shape)."""
    w, h = size
    x1, y1, x2, y2 = truth["bbox"] or (w * 0.3, h * 0.4, w * 0.5, h * 0.45)
    text = truth["text"]
    return {"type": truth["type"] or "l_board", "board_center_p": [round((x1 + x2) / 2), round((y1 + y2) / 2)],
            "width": round(x2 - x1), "height": round(y2 - y1), "sub_text": list(text[:3]), "main_text": list(text[3:]),
            "bbox": [round(v, 1) for v in (x1, y1, x2, y2)], "plate": text, "region": text[:2], "class": text[2],
            "serial": text[3:], "score": 0.93, "valid": True}


class Reader:
    """The stub's brain: the known plates of every image it may receive, and faults per image name."""

    def __init__(self, samples):
        self.known = {_sha(s.data): s for s in samples}
        self.faults = {}

    def add(self, sample):
        self.known[_sha(sample.data)] = sample

    def answer(self, data: bytes) -> list:
        s = self.known[_sha(data)]
        plates = [perfect(t, (s.width, s.height)) for t in s.truth]
        return self.faults[s.name](plates, s) if s.name in self.faults else plates


@pytest.fixture(scope="module")
def samples(tmp_path_factory):
    return st.sample_images(tmp_path_factory.mktemp("smoke-images"), N, SEED)


@pytest.fixture
def stub(samples):
    reader = Reader(samples)
    with Stub(answer=reader.answer) as server:
        server.reader = reader
        yield server


def run(stub, out, protocol="original", **kwargs):
    return st.smoke_test(client.Endpoint(stub.url, protocol=protocol), out, n_images=N, seed=SEED, timeout=10,
                         **kwargs)


# ------------------------------------------------------------------------------------------- images

def test_sample_images_have_readable_plates_and_one_plate_free_scene(samples, tmp_path):
    # the original project's style and stamped plates, all on real photos
    from platepipe.components.data import shipped_photos
    assert st.smoke_spec(1).procedural_fraction == 0 and st.smoke_spec(1).backgrounds is None and shipped_photos()
    assert [s.source for s in samples] == ["synthetic, original style"] * (N // 2) + ["synthetic"] * (N - N // 2) + ["plate-free"]
    assert all(s.truth for s in samples[:N]) and samples[-1].truth == []
    for s in samples[:N]:
        assert 1152 <= max(s.width, s.height) <= 1344
        assert Image.open(io.BytesIO(s.data)).size == (s.width, s.height)
        for t in s.truth:
            assert t["type"] in ("r_board", "l_board") and re.fullmatch(r"\d\d[A-E]\d{4}", t["text"])
            assert t["bbox"][2] - t["bbox"][0] >= 110  # large enough to read
    again = st.sample_images(tmp_path, N, SEED)
    assert [s.data for s in again] == [s.data for s in samples]  # same seed, same bytes: the stub can look up


# ------------------------------------------------------------------------------------------- stub

def test_all_right_passes_with_report(stub, samples, tmp_path):
    summary = run(stub, tmp_path / "out")
    plates = sum(len(s.truth) for s in samples)
    assert summary["passed"] and summary["failures"] == []
    assert summary["images"] == N + 1 and len(stub.requests) == N + 1
    assert summary["plates_expected"] == summary["plates_read"] == summary["plates_correct"] == plates
    assert summary["latency_ms_median"] > 0
    assert summary["endpoint"] == stub.url + "/predictions/pipeline" and summary["protocol"] == "original"
    saved = json.loads((tmp_path / "out" / "smoke.json").read_text())
    assert saved["passed"] and len(saved["results"]) == N + 1
    assert saved["results"][-1]["expected"] == [] and saved["results"][-1]["got"] == []
    page = (tmp_path / "out" / "smoke.html").read_text()
    assert "PASSED" in page and page.count("data:image/jpeg;base64,") == N + 1 and "<table" in page
    assert "http" not in page.replace(stub.url, "")  # self-contained: nothing fetched
    lines = summary["table"].splitlines()
    assert lines[0].split() == ["image", "expected", "got", "problems"]
    assert all(s.name in summary["table"] for s in samples)
    assert summary["table"].count(" ok") == N + 1


def table_problems(table: str, image: str) -> str:
    """The problems column of one image's row of the text table, unwrapped."""
    lines = table.splitlines()
    image_width, col = lines[0].index("expected"), lines[0].index("problems")
    first = next(i for i, line in enumerate(lines) if line.startswith(image + " "))
    row = [lines[first]]
    for line in lines[first + 1:]:
        if line[:image_width].strip():
            break
        row.append(line)
    return " ".join(" ".join(line[col:] for line in row).split())


def _bump(c):
    return str((int(c) + 1) % 10)


def _char_wrong(plates, s):
    p = plates[0]
    p["main_text"][3] = _bump(p["main_text"][3])
    p["plate"] = p["plate"][:6] + p["main_text"][3]
    p["serial"] = "".join(p["main_text"])
    return plates


def _type_wrong(plates, s):
    plates[0]["type"] = "r_board" if plates[0]["type"] == "l_board" else "l_board"
    return plates


def _extra(plates, s):
    return plates + [perfect({"type": "l_board", "text": "12A3456", "bbox": (100, 100, 260, 134)}, (s.width, s.height))]


def _sub_text_4(plates, s):
    plates[0]["sub_text"].append("A")
    return plates


def _letter_z(plates, s):
    plates[0]["sub_text"][2] = "Z"
    return plates


def _centre_outside(plates, s):
    plates[0]["board_center_p"] = [s.width + 50, 10]
    return plates


FAULTS = {
    # name: (image index (-1: the plate-free one), fault, what the table must say (format with truth t, sample s))
    "one character wrong": (0, _char_wrong, ["{t[text]} read as", "serial {got_serial}, expected {serial}"]),
    "wrong type": (0, _type_wrong, ["type {other}, expected {t[type]}"]),
    "missing plate": (1, lambda plates, s: plates[1:], ["{t[type]} {t[text]}: missing"]),
    "extra plate on plate-free image": (-1, _extra, ["extra plate l_board 12A3456 (no plate expected)"]),
    "sub_text of 4 items": (0, _sub_text_4, ["sub_text has 4 items, expected 3"]),
    "letter Z": (2, _letter_z, ["sub_text[2] 'Z' is not a letter A-E", "letter Z, expected {t[text][2]}"]),
    "board_center_p outside": (0, _centre_outside, ["board_center_p [{w50}, 10] is outside the {s.width}x{s.height}"]),
}


@pytest.mark.parametrize("fault", list(FAULTS))
def test_a_fault_fails_and_is_named_in_the_table(stub, samples, tmp_path, fault):
    index, mutate, wanted = FAULTS[fault]
    s = samples[index]
    stub.reader.faults[s.name] = mutate
    with pytest.raises(st.SmokeTestFailed) as err:
        run(stub, tmp_path / "out")
    t = s.truth[0] if s.truth else {}
    wanted = [w.format(t=t, s=s, other="r_board" if t.get("type") == "l_board" else "l_board", w50=s.width + 50,
                       got_serial=t["text"][3:6] + _bump(t["text"][6]) if t else "", serial=t.get("text", "")[3:])
              for w in wanted]
    summary = err.value.summary
    assert not summary["passed"]
    assert [f["image"] for f in summary["failures"]] == [s.name]  # only the faulty image fails
    problems = " | ".join(summary["failures"][0]["problems"])
    message = str(err.value)
    assert message.startswith(f"smoke test failed: 1 of {N + 1} images wrong")
    table = summary["table"]
    assert table in message
    row = table_problems(table, s.name)
    for w in wanted:
        assert w in problems, (w, problems)
        assert w in row, (w, table)
    saved = json.loads((tmp_path / "out" / "smoke.json").read_text())
    assert saved["passed"] is False and saved["failures"] == summary["failures"]
    page = (tmp_path / "out" / "smoke.html").read_text()
    assert "FAILED" in page and "tr class='bad'" in page
    assert html.escape(wanted[0]) in page


def test_table_lines_reads_up_with_the_plates_they_read(stub, samples, tmp_path):
    """Reads come back in any order: each one sits on its labelled plate's line, a missed plate says so on
    its own line, and an extra read comes after the labelled ones."""
    s = max(samples, key=lambda x: len(x.truth))
    assert len(s.truth) >= 2
    other = {"type": "l_board", "text": "12A3456", "bbox": (10, 10, 170, 44)}
    stub.reader.faults[s.name] = lambda plates, s: [perfect(other, (s.width, s.height))] + plates[:0:-1]
    with pytest.raises(st.SmokeTestFailed) as err:
        run(stub, tmp_path / "out")
    lines = err.value.summary["table"].splitlines()
    expected, got, problems = (lines[0].index(h) for h in ("expected", "got", "problems"))
    first = next(i for i, line in enumerate(lines) if line.startswith(s.name + " "))
    row = [(line[expected:got].strip(), line[got:problems].strip()) for line in lines[first:first + len(s.truth) + 1]]
    t = [f"{x['type']} {x['text']}" for x in s.truth]
    assert row == [(t[0], "(missing)"), *((x, x) for x in t[1:]), ("", "l_board 12A3456")]


@pytest.mark.parametrize("protocol", ["v1", "v2"])
def test_kserve_protocols(stub, samples, tmp_path, protocol):
    summary = run(stub, tmp_path / "out", protocol=protocol)
    assert summary["passed"] and summary["protocol"] == protocol
    path = client.Endpoint("x", protocol=protocol).path()
    assert [r["path"] for r in stub.requests] == [path] * (N + 1)
    stub.reader.faults[samples[0].name] = _letter_z
    with pytest.raises(st.SmokeTestFailed, match="'Z' is not a letter A-E"):
        run(stub, tmp_path / "out2", protocol=protocol)


def test_auth_error_stops_at_the_first_request(tmp_path):
    with Stub(fail_first=100, fail_code=401) as stub:
        with pytest.raises(st.SmokeTestFailed) as err:
            run(stub, tmp_path / "out")
    assert len(stub.requests) == 1
    failures = err.value.summary["failures"]
    assert len(failures) == N + 1
    assert "request failed" in failures[0]["problems"][0] and "401" in failures[0]["problems"][0]
    assert all(f["problems"][0].startswith("not sent: stopped after") for f in failures[1:])
    assert (tmp_path / "out" / "smoke.html").is_file()


def test_shape_checks_of_a_perfect_read_find_nothing_and_each_field_is_checked(samples):
    s = samples[0]
    good = perfect(s.truth[0], (s.width, s.height))
    assert st.shape_problems(good, s.width, s.height) == []
    cases = {"type": ("x_board", "type 'x_board' is not r_board or l_board"),
             "width": (-3, "width -3 is not a positive number"),
             "height": (good["height"] * 3, "does not match bbox"),
             "main_text": (["1", "2", "3"], "main_text has 3 items, expected 4"),
             "plate": ("00A0000", "plate '00A0000' does not match its characters"),
             "score": (1.7, "score 1.7 is not a number in [0, 1]"),
             "bbox": ([0, 0, s.width + 100, 10], "is outside the"),
             "valid": ("yes", "valid 'yes' is not true/false")}
    for key, (value, message) in cases.items():
        problems = st.shape_problems({**good, key: value}, s.width, s.height)
        assert any(message in p for p in problems), (key, problems)
    problems = st.shape_problems({k: v for k, v in good.items() if k != "board_center_p"}, s.width, s.height)
    assert problems == [f"{good['type']} {good['plate']}: field 'board_center_p' missing"]
    assert "is not a digit" in st.shape_problems({**good, "sub_text": [3, 8, "D"]}, s.width, s.height)[0]


# ------------------------------------------------------------------------------------------- user images

@pytest.fixture
def photos(tmp_path, samples):
    """A user images folder: a photo with known plates (another seed's image) and a plain plate-free one."""
    other = dataclasses.replace(st.sample_images(tmp_path / "other", 1, SEED + 100)[0], name="car")
    folder = tmp_path / "user" / "photos"
    folder.mkdir(parents=True)
    (folder / "car.jpg").write_bytes(other.data)
    Image.new("RGB", (640, 480), (90, 120, 90)).save(folder / "blank.png")
    return tmp_path / "user", other


def _user_yaml(root: Path, text: str) -> Path:
    path = root / "smoke-images.yaml"
    path.write_text(text)
    return path


def test_user_images_are_checked_by_string_or_box(stub, photos, tmp_path):
    root, car = photos
    texts = [t["text"] for t in car.truth]
    types = [t["type"] for t in car.truth]
    boxes = [[round(v, 1) for v in t["bbox"]] for t in car.truth]
    path = _user_yaml(root, "\n".join([
        f"- {{image: photos/car.jpg, plates: {json.dumps(texts)}, types: {json.dumps(types)}}}",
        f"- {{image: photos/car.jpg, plates: {json.dumps(texts[::-1])}}}",  # no types, any order
        f"- {{image: photos/car.jpg, plates: {json.dumps(texts)}, boxes: {json.dumps(boxes)}}}",
        "- {image: photos/blank.png, plates: []}", ""]))
    loaded = st.load_user_images(path)
    assert [u.name for u in loaded] == ["photos/car.jpg"] * 3 + ["photos/blank.png"]
    assert loaded[1].truth[0]["type"] is None and loaded[2].truth[0]["bbox"] == tuple(boxes[0])
    stub.reader.add(car)
    stub.reader.add(loaded[3])
    summary = run(stub, tmp_path / "out", user_images=path)
    assert summary["passed"] and summary["images"] == N + 1 + 4
    assert [r["source"] for r in summary["results"][N + 1:]] == ["user"] * 4
    assert summary["plates_correct"] == summary["plates_expected"]

    stub.reader.faults[car.name] = _char_wrong  # wrong serial: paired by string (4+ characters in place)
    with pytest.raises(st.SmokeTestFailed) as err:
        run(stub, tmp_path / "out2", user_images=path)
    failures = err.value.summary["failures"]
    assert [f["image"] for f in failures] == ["photos/car.jpg"] * 3
    t = car.truth[0]
    assert all(any(p.startswith(f"{st.show_truth({**t, 'type': ty})} read as") for p in f["problems"])
               for f, ty in zip(failures, [t["type"], None, None]))


BAD_YAML = {
    "not a list": ("image: photos/car.jpg\nplates: []\n", "expected a list of images at the top level"),
    "syntax error": ("- {image: photos/car.jpg, plates: [38D4831}\n", "not valid YAML at line 1"),
    "entry not a mapping": ("- photos/car.jpg\n", "entry 1: expected a mapping like"),
    "image missing": ("- {plates: []}\n", "entry 1: image: missing"),
    "image not found": ("- {image: photos/nope.jpg, plates: []}\n",
                        "photos/nope.jpg not found (paths are relative to the YAML file)"),
    "not an image": ("- {image: notes.txt, plates: []}\n", "is not an image Pillow can read"),
    "plates missing": ("- {image: photos/car.jpg}\n", "plates: missing"),
    "bad plate": ("- {image: photos/car.jpg, plates: [38Z4831]}\n",
                  "entry 1 (photos/car.jpg): plates[0]: '38Z4831' is not a plate (expected 2 digits, a letter A-E"),
    "number plate": ("- {image: photos/car.jpg, plates: [1234567]}\n", "plates[0]: 1234567 is not a plate"),
    "types count": ("- {image: photos/car.jpg, plates: ['38D4831'], types: [l_board, r_board]}\n",
                    "types: 2 item(s) for 1 plate(s)"),
    "bad type": ("- {image: photos/car.jpg, plates: ['38D4831'], types: [x_board]}\n",
                 "types[0]: 'x_board' is not a plate type (expected r_board or l_board)"),
    "bad box": ("- {image: photos/car.jpg, plates: ['38D4831'], boxes: [[10, 10, 5, 20]]}\n",
                "boxes[0]: [10, 10, 5, 20] is not a box"),
    "unknown key": ("- {image: photos/car.jpg, plate: ['38D4831']}\n", "unknown key 'plate' (did you mean 'plates'?)"),
    "second entry": ("- {image: photos/blank.png, plates: []}\n- {image: photos/car.jpg, plates: [38D483]}\n",
                     "entry 2 (photos/car.jpg): plates[0]: '38D483' is not a plate"),
}


@pytest.mark.parametrize("case", list(BAD_YAML))
def test_bad_user_images_yaml_is_a_clear_error(photos, case):
    root, _ = photos
    (root / "notes.txt").write_text("not a picture")
    text, message = BAD_YAML[case]
    path = _user_yaml(root, text)
    with pytest.raises(st.UserImagesError) as err:
        st.load_user_images(path)
    assert message in str(err.value), str(err.value)
    assert str(path) in str(err.value)


def test_bad_user_images_fail_before_anything_is_sent(stub, photos, tmp_path):
    root, _ = photos
    with pytest.raises(ValueError, match="user images file not found"):
        run(stub, tmp_path / "out", user_images=root / "missing.yaml")
    with pytest.raises(ValueError, match="is not a plate"):
        run(stub, tmp_path / "out", user_images=_user_yaml(root, "- {image: photos/car.jpg, plates: [XX]}\n"))
    assert stub.requests == [] and not (tmp_path / "out").exists()


# ------------------------------------------------------------------------------------------- CLI

def test_cli_passes_with_exit_0_and_uses_deploy_protocol(stub, tmp_path, capsys):
    rc = main(["smoke-test", "--url", stub.url, "--out", str(tmp_path / "out"), "--set", f"smoke.n_images={N}"])
    out = capsys.readouterr().out
    assert rc == 0, out
    assert "smoke test passed" in out and "image" in out and "problems" in out
    assert [r["path"] for r in stub.requests] == ["/v1/models/pipeline:predict"] * (N + 1)  # deploy.protocol: v1
    assert (tmp_path / "out" / "smoke.json").is_file() and (tmp_path / "out" / "smoke.html").is_file()


def test_cli_fails_with_exit_1_and_the_table(stub, samples, tmp_path, capsys):
    stub.reader.faults[samples[1].name] = lambda plates, s: []
    rc = main(["smoke-test", "--url", stub.url, "--out", str(tmp_path / "out"), "--set", f"smoke.n_images={N}",
               "--set", "smoke.protocol=v2"])
    captured = capsys.readouterr()
    assert rc == 1
    assert "smoke test failed: 1 of" in captured.err
    for t in samples[1].truth:
        assert f"{t['type']} {t['text']}: missing" in captured.err
    assert [r["path"] for r in stub.requests] == ["/v2/models/pipeline/infer"] * (N + 1)  # smoke.protocol wins


def test_cli_protocol_flag_token_and_bad_yaml(stub, photos, tmp_path, capsys):
    key_file = tmp_path / "key_file.json"
    key_file.write_text(json.dumps({"inference": {"key": "s3cret"}}))
    rc = main(["smoke-test", "--url", stub.url, "--protocol", "original", "--token-file", str(key_file),
               "--out", str(tmp_path / "out"), "--set", f"smoke.n_images={N}", "--set", "smoke.protocol=v2"])
    assert rc == 0
    assert {r["path"] for r in stub.requests} == {"/predictions/pipeline"}
    assert {r["headers"]["Authorization"] for r in stub.requests} == {"Bearer s3cret"}
    assert "s3cret" not in (tmp_path / "out" / "smoke.json").read_text()
    root, _ = photos
    bad = _user_yaml(root, "- {image: photos/car.jpg, plates: [38Z4831]}\n")
    capsys.readouterr()
    rc = main(["smoke-test", "--url", stub.url, "--out", str(tmp_path / "out2"), "--set", f"smoke.user_images={bad}"])
    err = capsys.readouterr().err
    assert rc == 2 and "bad user images file" in err and "'38Z4831' is not a plate" in err


def test_cli_isvc_takes_url_and_host_from_the_inference_service(stub, tmp_path, monkeypatch):
    from platepipe.components import deploy
    calls = []

    def endpoint_for(name, namespace, **kwargs):
        calls.append((name, namespace, kwargs))
        return stub.url, "platepipe.team-a.example.com"

    monkeypatch.setattr(deploy, "endpoint_for", endpoint_for)
    rc = main(["smoke-test", "--isvc", "platepipe", "-n", "team-a", "--out", str(tmp_path / "out"),
               "--set", f"smoke.n_images={N}"])
    assert rc == 0
    assert calls == [("platepipe", "team-a", {"kubeconfig": None, "ingress_host": None, "ingress_port": None})]
    assert {r["headers"]["Host"] for r in stub.requests} == {"platepipe.team-a.example.com"}


# ------------------------------------------------------------------------------------------- real TorchServe

@pytest.mark.timeout(600)
def test_real_torchserve_with_a_tiny_model_fails_naming_the_missed_plates(tmp_path):
    from platepipe.components.archive import archive
    from platepipe.pipeline.config import settings
    from platepipe.components.data import generate
    from platepipe.components.train import train
    from platepipe.components import local_server as server

    generate(tmp_path / "data", settings("data", n_images=8, seed=23, min_size=320, max_size=400, plate_width_min=80,
                                         plate_width_max=200, split_train=0.5, split_val=0.25, split_test=0.25), workers=1, progress=False)
    pth = train(tmp_path / "data", tmp_path / "train", settings("model", preset="tiny"), settings("train", max_iters=2, val_interval=2, workers=0))
    layout = archive(pth, tmp_path / "layout", settings("serving", batch_size=1, max_request_size_mb=8))
    ports = [server.free_port() for _ in range(3)]
    srv = server.start(layout, inference_port=ports[0], management_port=ports[1], metrics_port=ports[2], timeout=240)
    try:
        assert srv.token_auth
        endpoint = client.Endpoint(srv.inference_url, model=srv.model_name, token=srv.keys["inference"])
        with pytest.raises(st.SmokeTestFailed) as err:
            st.smoke_test(endpoint, tmp_path / "out", n_images=2, timeout=120)
    finally:
        assert server.stop(layout)
    assert server.running(layout) is None and server._port_free(ports[0])
    summary = err.value.summary
    message = str(err.value)
    assert summary["images"] == 3 and summary["latency_ms_median"] > 0
    assert summary["plates_expected"] > 0 and summary["plates_correct"] == 0
    missed = [f"{t['type']} {t['plate']}: missing" for r in summary["results"] for t in r["expected"]]
    assert len(missed) == summary["plates_expected"]
    for line in missed:
        assert line in message, message
    assert all(not p.startswith("request failed") for f in summary["failures"] for p in f["problems"])
    assert json.loads((tmp_path / "out" / "smoke.json").read_text())["passed"] is False
    assert "FAILED" in (tmp_path / "out" / "smoke.html").read_text()
