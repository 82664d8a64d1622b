"""The `platepipe` commands, one module per kind: model, serving, kubeflow, checks (pipeline/cli.py assembles
them)."""
