"""Model versions: each uploaded version's manifest carries its model card (figures, data, source commit, run);
`platepipe models` lists them and marks the one the InferenceService serves; `platepipe promote VERSION` deploys
a listed version through deploy and the smoke test, and a failed smoke test puts the previous one back. The
cluster is the stub API server, the bucket fake-gcs-server, the endpoint a real local TorchServe."""

import json
import subprocess
from pathlib import Path

import pytest

from k8s_stub import K8sStub
from platepipe.components import local_server as server
from platepipe.components.archive import archive
from platepipe.components.deploy import deploy
from platepipe.components.export import stamp
from platepipe.components.upload import upload
from platepipe.pipeline.cli import main
from platepipe.pipeline.config import settings

ROOT = Path(__file__).resolve().parents[1]
IMAGE = "registry.example.com/ml/platepipe-serving:0.1.0"
pytestmark = pytest.mark.timeout(600)


def version(pth: Path, work: Path, name: str, eir: float) -> str:
    """Stamp the model with an evaluation, archive it and upload it as version `name`; its storage URI."""
    stamped = stamp(pth, work / name / "pipeline.pth", {"eir": eir, "gate_eir": eir, "gate_set": "test",
                                                         "ood": {"original": {"plates": 10, "eir": eir - 0.1}}},
                    run=f"platepipe-run-{name}")
    layout = archive(stamped, work / name / "layout")
    return upload(layout, "gs://models/pp", version=name, progress=lambda _: None)["storage_uri"]


def cli(capsys, *args) -> tuple[int, str, str]:
    code = main(list(args))
    out = capsys.readouterr()
    return code, out.out, out.err


def test_versions_carry_their_card_and_promote_goes_through_the_smoke_test(tiny_model, gcs, tmp_path, capsys):
    from platepipe.components.gcs import client

    _, pth = tiny_model
    client().create_bucket("models")
    v1 = version(pth, tmp_path, "v1", 0.91)
    v2 = version(pth, tmp_path, "v2", 0.93)
    manifest = json.loads(client().bucket("models").blob("pp/v2/platepipe-version.json").download_as_bytes())
    card = manifest["model"]
    commit = subprocess.run(["git", "rev-parse", "HEAD"], cwd=ROOT, capture_output=True, text=True).stdout.strip()
    assert card["gate_eir"] == 0.93 and card["ood"] == {"original": pytest.approx(0.83)}
    assert card["source"] == {"commit": commit or None, "run": "platepipe-run-v2"}
    assert card["thresholds"] == settings("model").thresholds and card["data_fingerprint"]

    cfg = settings("deploy", namespace="ml", image=IMAGE)
    layout2 = tmp_path / "v2" / "layout"
    ports = [server.free_port() for _ in range(3)]
    with K8sStub() as stub:
        kubeconfig = str(stub.kubeconfig(tmp_path / "kc"))
        where = ["--to", "gs://models/pp", "-n", "ml", "--kubeconfig", kubeconfig]
        deploy(cfg, v1, kubeconfig=kubeconfig, poll_s=0.01, log=lambda _: None)
        code, out, err = cli(capsys, "models", *where)
        assert code == 0, err
        lines = {line.split()[0]: line for line in out.splitlines()[1:]}
        assert "EIR 0.910 (test)" in lines["v1"] and lines["v1"].endswith("<- serving")
        assert "EIR 0.930 (test)" in lines["v2"] and "serving" not in lines["v2"]
        assert (commit or "")[:8] in lines["v2"]

        # the endpoint the InferenceService would answer at: a local TorchServe on v2's layout, reached as the
        # ingress (deploy.ingress_host), with only the plate-free scene to read (the tiny model reads no plate)
        srv = server.start(layout2, inference_port=ports[0], management_port=ports[1], metrics_port=ports[2],
                           token_auth=False)
        try:
            through = ["--image", IMAGE, "--set", "deploy.ingress_host=127.0.0.1",
                       "--set", f"deploy.ingress_port={ports[0]}", "--set", "deploy.timeout_s=10"]
            code, out, err = cli(capsys, "promote", "v2", *where, *through, "--set", "smoke.n_images=0",
                                 "--out", str(tmp_path / "promote"))
            assert code == 0, out + err
            assert "v2 serves now" in out and (tmp_path / "promote" / "smoke.html").is_file()
            assert stub.get("ml", "platepipe")["spec"]["predictor"]["model"]["storageUri"] == v2
            # a model served already: v2 went out as a canary, smoke-tested at 0% (its own URL), 10% and 100%
            shares = [body["spec"]["predictor"].get("canaryTrafficPercent") for method, _, _, body in stub.calls("PUT")
                      if body["spec"]["predictor"]["model"]["storageUri"] == v2]
            assert shares == [0, 10, None], shares
            assert "rolled out: the new model has 100% of traffic (10% -> 100%)" in out
            code, out, _ = cli(capsys, "models", *where)
            assert [line.split()[0] for line in out.splitlines() if line.endswith("<- serving")] == ["v2"]

            # a version whose smoke test fails (plates the tiny model cannot read) is rolled back
            code, out, err = cli(capsys, "promote", "v1", *where, *through, "--set", "smoke.n_images=2",
                                 "--out", str(tmp_path / "bad"))
            assert code == 2 and "rolled back" in err, out + err
            assert stub.get("ml", "platepipe")["spec"]["predictor"]["model"]["storageUri"] == v2
        finally:
            server.stop(srv.layout)

        code, _, err = cli(capsys, "promote", "v9", *where, "--image", IMAGE)
        assert code == 2 and "no version 'v9'" in err and "v1, v2" in err
