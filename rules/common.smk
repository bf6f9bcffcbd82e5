from tcspec.layout import STAGES
from tcspec.plan.workflow import ID_PATTERN, RULE_STAGES, Workflow, stop_jobs_on_interrupt

WF = Workflow(
    config["spec"],
    config["results"],
    config.get("stream_budget_mb"),
    gpu_class=config.get("gpu_class"),
    sustained_tflops=config.get("sustained_tflops"),
)
stop_jobs_on_interrupt()

# every job runs one stored task by stage and id: `tcspec task STAGE ID --results R`
TASK = "exec tcspec task {params.stage} {params.id} --results {params.results} > {log} 2>&1"


wildcard_constraints:
    id=ID_PATTERN,
