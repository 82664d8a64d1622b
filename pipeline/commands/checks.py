"""Commands that look at the set-up: config (the effective settings), doctor (this machine or the cluster)."""

from __future__ import annotations

import argparse
import sys

from platepipe.pipeline.commands.common import load, with_given
from platepipe.pipeline.config import dump_config


def register(sub, common) -> None:
    """Add this module's commands to the `platepipe` parser."""
    p = sub.add_parser("config", parents=[common], help="print the effective configuration as YAML",
                       description="Print the configuration after --config and --set are applied.")
    p.set_defaults(func=cmd_config)

    p = sub.add_parser("doctor", parents=[common], help="check that the set-up (or the cluster) is complete",
                       description="Check torch, mmcv's compiled ops, mmdet, kfp, kserve, GCS client, "
                                   "TorchServe and Java; exit 1 if something required is missing. With --cluster: "
                                   "check the cluster a deploy goes to instead (KServe's CRDs, the serving runtime, "
                                   "RBAC for every verb the deploy uses, GPU nodes, the storage service account), "
                                   "each with its fix.")
    p.add_argument("--cluster", action="store_true", help="check the Kubernetes cluster instead of this machine")
    p.add_argument("--kubeconfig", metavar="FILE",
                   help="kubeconfig to use (default: $KUBECONFIG, ~/.kube/config, else the pod's service account)")
    p.add_argument("-n", "--namespace", help="namespace deploys go to (default: deploy.namespace)")
    p.set_defaults(func=cmd_doctor)


def _doctor_cluster(args: argparse.Namespace) -> int:
    from platepipe.components import deploy, runtime
    cfg = load(args)
    spec = with_given(cfg.deploy, namespace=args.namespace)
    checks = runtime.cluster_checks(spec, deploy.api_client(args.kubeconfig))
    print(runtime.report(checks))
    if any(c.ok is False for c in checks):
        print("cluster not ready for `platepipe deploy`: fix the FAIL lines above", file=sys.stderr)
        return 1
    print("cluster ok" + (" (?? lines: not allowed to look; ask an admin)" if any(c.ok is None for c in checks) else ""))
    return 0


def cmd_config(args: argparse.Namespace) -> int:
    sys.stdout.write(dump_config(load(args)))
    return 0


def cmd_doctor(args: argparse.Namespace) -> int:
    if args.cluster:
        return _doctor_cluster(args)
    from platepipe.pipeline import doctor
    results = doctor.run_checks()
    print(doctor.report(results))
    if doctor.healthy(results):
        print("set-up ok")
        return 0
    print("set-up incomplete: fix the FAIL lines above (make setup installs everything)", file=sys.stderr)
    return 1
