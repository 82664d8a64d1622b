"""Champion/challenger: the model serving now (the champion) against the one just trained (the challenger).

    champion = serving_model_kserve(deploy_cfg, work)   # or serving_model_local(record, work); None: nothing serves
    decision = compare(challenger_metrics, champion_metrics, margin)
    html = comparison_html(decision, challenger_report, champion_report)

The champion is found where serving finds it: the InferenceService's storage URI (the version folder platepipe
upload wrote), whose .mar holds the pipeline.pth it serves; locally, the layout the local deploy step serves.
Both models are evaluated on the same data set (its test split and every out-of-distribution set). The
challenger is promoted unless it reads worse than the champion by more than the margin on any set; on the
plate-free set, unless it reports more false plates. A first deploy has no champion and promotes.
"""

from __future__ import annotations

import html
import json
import zipfile
from dataclasses import dataclass
from pathlib import Path


@dataclass(frozen=True)
class Champion:
    model: Path          # its pipeline.pth, taken out of the served .mar
    storage_uri: str     # where it is served from (gs://... or a local layout folder)
    version: str         # the version folder's name (or the layout folder's)
    where: str           # in words: InferenceService NS/NAME, or the local TorchServe


def pipeline_from_mar(mar: Path, out: Path) -> Path:
    """The pipeline.pth a .mar carries, written to out (checked: digest, both stages)."""
    from platepipe.serving.reader import check_pipeline

    try:
        with zipfile.ZipFile(mar) as archive:
            data = archive.read("pipeline.pth")
    except (zipfile.BadZipFile, KeyError) as exc:
        raise ValueError(f"{mar} is not a platepipe .mar with a pipeline.pth ({exc}): the serving model cannot be "
                         f"compared; deploy a version made by platepipe, or force the promotion") from None
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_bytes(data)
    check_pipeline(out)
    return out


def _served_model(store: Path, work: Path, where: str) -> Path:
    """The pipeline.pth of the one .mar in a served model store, taken out into work."""
    mars = sorted(store.glob("*.mar"))
    if len(mars) != 1:
        raise ValueError(f"{where} holds {len(mars)} .mar files: expected the one platepipe archived")
    return pipeline_from_mar(mars[0], work / "champion" / "pipeline.pth")


def serving_model_kserve(deploy_cfg, work: Path, api_client=None, kubeconfig=None) -> Champion | None:
    """The model the InferenceService deploy.name serves now, fetched from its storage URI; None when there is no
    InferenceService yet (a first deploy). A cluster or bucket that cannot be read is an error, never 'none'."""
    from platepipe.components.deploy import DeployError, find
    from platepipe.components.gcs import download_prefix

    isvc = find(deploy_cfg.name, deploy_cfg.namespace, api_client, kubeconfig)
    where = f"InferenceService {deploy_cfg.namespace}/{deploy_cfg.name}"
    if isvc is None:
        return None
    uri = ((isvc.get("spec") or {}).get("predictor") or {}).get("model", {}).get("storageUri")
    if not uri:
        raise DeployError(f"{where} names no storageUri: it was not deployed by platepipe; compare by hand or "
                          f"force the promotion")
    if not uri.startswith("gs://"):
        raise DeployError(f"{where} serves {uri}, not a gs:// version platepipe uploaded: force the promotion to "
                          f"replace it")
    store = download_prefix(uri.rstrip("/") + "/model-store", work / "champion" / "model-store")
    model = _served_model(store, work, f"{uri.rstrip('/')}/model-store")
    return Champion(model, uri, uri.rstrip("/").rsplit("/", 1)[-1], where)


def serving_model_local(layout: str | Path | None, work: Path) -> Champion | None:
    """The model the local TorchServe serves from layout (the local deploy step's record); None when nothing
    serves there."""
    from platepipe.components import local_server

    if not layout or local_server.serving(Path(layout)) is None:
        return None
    model = _served_model(Path(layout) / "model-store", work, f"{layout}/model-store")
    return Champion(model, str(layout), Path(layout).parent.name, f"the local TorchServe ({layout})")


def _sets(metrics: dict) -> dict[str, dict]:
    """{set name: its metrics}: the own test split and each out-of-distribution set."""
    return {"test": metrics, **(metrics.get("ood") or {})}


def compare(challenger: dict, champion: dict | None, margin: float, force: bool = False) -> dict:
    """Whether the challenger may replace the champion, and the figures side by side. margin: how much lower
    the challenger's EIR may be on a set (negative: it must read better by that much); force: promote it all the
    same, saying where it reads worse."""
    if champion is None:
        return {"promote": True, "first": True, "rows": [],
                "reason": "first deploy: no model serves yet, so there is no champion to compare with"}
    rows, worse = [], []
    new_sets, old_sets = _sets(challenger), _sets(champion)
    for name in [n for n in new_sets if n in old_sets]:
        new, old = new_sets[name], old_sets[name]
        if new.get("plates"):
            row = {"set": name, "measure": "EIR", "challenger": new["eir"], "champion": old["eir"],
                   "delta": round(new["eir"] - old["eir"], 4)}
            row["worse"] = new["eir"] < old["eir"] - margin
        else:  # plate-free: every plate reported is false
            row = {"set": name, "measure": "false plates", "challenger": new.get("false_plates", 0),
                   "champion": old.get("false_plates", 0)}
            row["delta"] = row["challenger"] - row["champion"]
            row["worse"] = row["delta"] > 0
        rows.append(row)
        if row["worse"]:
            worse.append(row)
    said = "; ".join(f"{r['set']} {r['measure']} {r['challenger']} against {r['champion']}" for r in worse)
    if not worse:
        reason = f"promoted: the new model is not worse on any of {len(rows)} sets (margin {margin:g})"
    elif force:
        reason = f"promoted by force_promotion, although it reads worse ({said}; margin {margin:g})"
    else:
        reason = f"kept the serving model: the new one reads worse ({said}; margin {margin:g})"
    return {"promote": force or not worse, "first": False, "rows": rows, "reason": reason}


def comparison_html(decision: dict, challenger_report: str, champion_report: str | None,
                    champion: Champion | None) -> str:
    """One page: the decision, the figures side by side, then each model's evaluation report (its worst plates)."""
    rows = "".join(
        f"<tr{' class=worse' if r['worse'] else ''}><td>{html.escape(r['set'])}</td><td>{r['measure']}</td>"
        f"<td>{r['challenger']}</td><td>{r['champion']}</td><td>{r['delta']:+g}</td></tr>"
        for r in decision["rows"])
    about = html.escape(f"{champion.where}, version {champion.version}") if champion else "none"

    def framed(title: str, report: str) -> str:
        return (f"<h2>{html.escape(title)}</h2><iframe style='width:100%;height:900px;border:1px solid #ccc' "
                f"srcdoc=\"{html.escape(report, quote=True)}\"></iframe>")

    return ("<!doctype html><meta charset='utf-8'><title>platepipe: new model against the serving one</title>"
            "<style>body{font-family:sans-serif}td,th{padding:2px 10px;text-align:right}"
            "tr.worse{background:#fdd}</style>"
            f"<h1>{'Promoted' if decision['promote'] else 'Kept the serving model'}</h1>"
            f"<p>{html.escape(decision['reason'])}</p><p>Serving model: {about}</p>"
            + (f"<table><tr><th>set</th><th>measure</th><th>new</th><th>serving</th><th>change</th></tr>{rows}"
               "</table>" if rows else "")
            + framed("The new model's evaluation", challenger_report)
            + (framed("The serving model's evaluation, on the same data", champion_report) if champion_report else ""))


def metric_rows(decision: dict) -> list[tuple[str, float]]:
    """KFP Metrics: each set's figure for both models, and the decision."""
    out = [("promoted", float(decision["promote"]))]
    for r in decision["rows"]:
        key = r["set"] if r["measure"] == "EIR" else f"{r['set']}.false_plates"
        out += [(f"challenger.{key}", float(r["challenger"])), (f"champion.{key}", float(r["champion"]))]
    return out


def summary(decision: dict, champion: Champion | None) -> str:
    return json.dumps({"promote": decision["promote"], "reason": decision["reason"],
                       "champion": None if champion is None else {"version": champion.version,
                                                                  "storage_uri": champion.storage_uri,
                                                                  "where": champion.where}})
