"""Champion/challenger: the decision on figures, and finding the serving model where serving finds it (the
InferenceService's storage URI on the stub API server, the version fake-gcs-server holds)."""

import pytest

from k8s_stub import K8sStub
from platepipe.components import champion as ch
from platepipe.components.archive import archive
from platepipe.components.deploy import DeployError, deploy
from platepipe.components.upload import upload
from platepipe.pipeline.config import settings
from platepipe.serving.reader import load_pipeline


def figures(test: float, **ood) -> dict:
    """Evaluation figures as the evaluate step reports them: the own split and each set."""
    sets = {name: ({"plates": 100, "eir": eir} if name != "plate-free" else {"plates": 0, "eir": 0.0,
                                                                           "false_plates": eir})
            for name, eir in ood.items()}
    return {"plates": 200, "eir": test, "false_plates": 1, "ood": sets}


def test_a_first_deploy_has_no_champion_and_promotes():
    decision = ch.compare(figures(0.9), None, margin=0.01)
    assert decision["promote"] and decision["first"] and "first deploy" in decision["reason"]


def test_not_worse_by_more_than_the_margin_is_promoted():
    new = figures(0.905, original=0.90, **{"unseen-fonts": 0.78, "plate-free": 0})
    old = figures(0.910, original=0.89, **{"unseen-fonts": 0.785, "plate-free": 0})
    decision = ch.compare(new, old, margin=0.01)
    assert decision["promote"], decision
    assert [r["set"] for r in decision["rows"]] == ["test", "original", "unseen-fonts", "plate-free"]
    assert decision["rows"][0]["delta"] == pytest.approx(-0.005)


def test_worse_on_one_set_keeps_the_serving_model_and_says_where():
    new = figures(0.95, original=0.80, **{"plate-free": 0})
    old = figures(0.90, original=0.85, **{"plate-free": 0})
    decision = ch.compare(new, old, margin=0.01)
    assert not decision["promote"]
    assert decision["reason"].startswith("kept the serving model") and "original EIR 0.8 against 0.85" in decision["reason"]
    assert [r["set"] for r in decision["rows"] if r["worse"]] == ["original"]


def test_more_false_plates_on_plate_free_photos_is_worse():
    decision = ch.compare(figures(0.95, **{"plate-free": 3}), figures(0.90, **{"plate-free": 0}), margin=0.5)
    assert not decision["promote"] and "plate-free false plates 3 against 0" in decision["reason"]


def test_a_negative_margin_asks_for_a_better_model():
    same = figures(0.9, original=0.9)
    assert ch.compare(same, same, margin=0.0)["promote"]
    assert not ch.compare(same, same, margin=-0.01)["promote"]


def test_the_comparison_page_and_metrics_show_both_models():
    decision = ch.compare(figures(0.95, original=0.80), figures(0.90, original=0.85), margin=0.01)
    page = ch.comparison_html(decision, "<p>new report</p>", "<p>old report</p>", ch.Champion(
        model=None, storage_uri="gs://m/pp/v1", version="v1", where="InferenceService ml/platepipe"))
    assert "Kept the serving model" in page and "version v1" in page
    assert "new report" in page and "old report" in page and "class=worse" in page
    rows = dict(ch.metric_rows(decision))
    assert rows["promoted"] == 0.0 and rows["challenger.original"] == 0.80 and rows["champion.original"] == 0.85


def test_a_mar_without_a_model_is_refused(tmp_path):
    bad = tmp_path / "x.mar"
    bad.write_bytes(b"not a zip")
    with pytest.raises(ValueError, match="not a platepipe .mar"):
        ch.pipeline_from_mar(bad, tmp_path / "out.pth")


@pytest.mark.timeout(300)
def test_the_champion_is_what_the_inference_service_serves(tiny_model, gcs, tmp_path):
    """The InferenceService names a version in the bucket: its .mar's pipeline.pth is the champion, the very
    file that was archived; no InferenceService: a first deploy; a foreign storage URI: an error, not 'none'."""
    from platepipe.components.gcs import client

    _, pth = tiny_model
    client().create_bucket("models")
    layout = archive(pth, tmp_path / "layout")
    uri = upload(layout, "gs://models/pp", version="v7", progress=lambda _: None)["storage_uri"]
    cfg = settings("deploy", namespace="ml", image="registry.example.com/ml/platepipe-serving:1")
    with K8sStub() as stub:
        kubeconfig = stub.kubeconfig(tmp_path / "kc")
        assert ch.serving_model_kserve(cfg, tmp_path / "w0", kubeconfig=kubeconfig) is None
        deploy(cfg, uri, kubeconfig=kubeconfig, poll_s=0.01, log=lambda _: None)
        found = ch.serving_model_kserve(cfg, tmp_path / "w1", kubeconfig=kubeconfig)
        assert found.version == "v7" and found.storage_uri == uri and "ml/platepipe" in found.where
        assert load_pipeline(found.model)["digest"] == load_pipeline(pth)["digest"]
        deploy(cfg, "pvc://models/pp", kubeconfig=kubeconfig, poll_s=0.01, log=lambda _: None)
        with pytest.raises(DeployError, match="not a gs:// version"):
            ch.serving_model_kserve(cfg, tmp_path / "w2", kubeconfig=kubeconfig)
