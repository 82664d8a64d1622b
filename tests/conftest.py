import pytest

from platepipe.components.data import generate
from platepipe.components.progress import show
from platepipe.pipeline.config import settings
from platepipe.pipeline.fake_gcs import FakeGcs

show()  # the library's progress lines on standard output, as the CLI and the pipeline's steps show them


@pytest.fixture(scope="session")
def data_dir(tmp_path_factory):
    """A small synthetic data set (12 images of 320-400 px, 6 for training) for the model's tests."""
    out = tmp_path_factory.mktemp("model") / "data"
    generate(out, settings("data", n_images=12, seed=11, min_size=320, max_size=400, plate_width_min=80,
                           plate_width_max=200, split_train=0.5, split_val=0.25, split_test=0.25),
             workers=1, progress=False)
    return out


@pytest.fixture(scope="session")
def tiny_model(tmp_path_factory):
    """(folder, pipeline.pth): 8 images of 320-400 px in FOLDER/data and a tiny model trained 2 iterations on
    them, for the serving tests (what it reads does not matter, only that it is a real exported model)."""
    from platepipe.components.train import train

    root = tmp_path_factory.mktemp("tiny-model")
    generate(root / "data", settings("data", n_images=8, seed=21, min_size=320, max_size=400, plate_width_min=80,
                                     plate_width_max=200, split_train=0.5, split_val=0.25, split_test=0.25),
             workers=1, progress=False)
    return root, train(root / "data", root / "train", settings("model", preset="tiny"),
                       settings("train", max_iters=2, val_interval=2, workers=0))


@pytest.fixture
def gcs(monkeypatch, tmp_path):
    """A real fake-gcs-server on 127.0.0.1 with google-cloud-storage pointed at it."""
    with FakeGcs(root=tmp_path / "gcs-root") as server:
        monkeypatch.setenv("STORAGE_EMULATOR_HOST", server.url)
        monkeypatch.delenv("GOOGLE_APPLICATION_CREDENTIALS", raising=False)
        yield server
