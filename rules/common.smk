import os

from tcspec.plan.stages import RULE_STAGES, STAGES
from tcspec.plan.workflow import (
    DEVICE_ENV,
    ID_PATTERN,
    Workflow,
    stop_jobs_on_interrupt,
)
from tcspec.tasks.tables import publish_experiment

WF = Workflow(
    config["spec"],
    config["results"],
    config.get("stream_budget_mb"),
    gpu_class=config.get("gpu_class"),
    sustained_tflops=config.get("sustained_tflops"),
)
stop_jobs_on_interrupt()
os.environ[DEVICE_ENV] = WF.device  # jobs inherit it; no rule names it

# every job runs one stored task by stage and id: `tcspec task STAGE ID --results R`
TASK = "exec tcspec task {params.stage} {params.id} --results {params.results} > {log} 2>&1"


wildcard_constraints:
    id=ID_PATTERN,
