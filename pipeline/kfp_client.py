"""Talk to a Kubeflow Pipelines (KFP 2.x) API server: upload the compiled pipeline, start runs, schedule them.

Plain functions over the real `kfp.Client` (which speaks the v2beta1 REST API):

    kfp = connect("http://localhost:8080")                       # or KF_PIPELINES_ENDPOINT / the kube config
    upload_pipeline(kfp, "pipeline.yaml", "platepipe", version="v2")
    submit(kfp, "pipeline.yaml", {"n_images": 500}, experiment="platepipe", wait=True)
    schedule(kfp, find_version(kfp, "platepipe", "latest"), "0 3 * * 0", experiment="platepipe",
             name="weekly")

A pipeline source is either a compiled package (a path or a `Package`: its spec travels inside the run) or
a `PipelineVersion` already uploaded (the run refers to it by id). Parameters are checked against the
pipeline's own (root.inputDefinitions.parameters) and converted to their types before anything is sent.
Every failure is raised as one `KfpError` sentence that says what to do: the server unreachable, 401/403,
a pipeline that already exists, an unknown parameter, a bad cron expression.

The parts, one file each: kfp_connection.py (connecting, errors), kfp_packages.py (sources and their
parameters), kfp_runs.py (pipelines, versions, runs), kfp_schedules.py (recurring runs). This module is
their public face.
"""

from platepipe.pipeline.kfp_connection import Kfp, KfpError, connect, normalise_host  # noqa: F401
from platepipe.pipeline.kfp_packages import (Package, PipelineVersion, Source, check_params,  # noqa: F401
                                             describe_parameters, load_package, parse_param_args)
from platepipe.pipeline.kfp_runs import (experiment_id, find_version, submit, upload_pipeline,  # noqa: F401
                                         wait_for_run)
from platepipe.pipeline.kfp_schedules import (check_max_concurrency, delete_schedule, kfp_cron,  # noqa: F401
                                              list_schedules, schedule)
