import pytest

from components.data import DataSpec, generate
from pipeline.fake_gcs import FakeGcs


@pytest.fixture(scope="session")
def data_dir(tmp_path_factory):
    """A small synthetic data set (12 images of 320-400 px, 6 for training) for the model's tests."""
    out = tmp_path_factory.mktemp("model") / "data"
    generate(out, DataSpec(n_images=12, seed=11, min_size=320, max_size=400, plate_width_min=80,
                           plate_width_max=200, split=(0.5, 0.25, 0.25)), workers=1, progress=False)
    return out


@pytest.fixture
def gcs(monkeypatch, tmp_path):
    """A real fake-gcs-server on 127.0.0.1 with google-cloud-storage pointed at it."""
    with FakeGcs(root=tmp_path / "gcs-root") as server:
        monkeypatch.setenv("STORAGE_EMULATOR_HOST", server.url)
        monkeypatch.delenv("GOOGLE_APPLICATION_CREDENTIALS", raising=False)
        yield server
