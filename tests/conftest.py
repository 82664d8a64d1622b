import pytest

from pipeline.fake_gcs import FakeGcs


@pytest.fixture
def gcs(monkeypatch, tmp_path):
    """A real fake-gcs-server on 127.0.0.1 with google-cloud-storage pointed at it."""
    with FakeGcs(root=tmp_path / "gcs-root") as server:
        monkeypatch.setenv("STORAGE_EMULATOR_HOST", server.url)
        monkeypatch.delenv("GOOGLE_APPLICATION_CREDENTIALS", raising=False)
        yield server
