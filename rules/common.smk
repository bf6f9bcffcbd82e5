from tcspec.workflow import ID_PATTERN, Workflow

WF = Workflow(config["spec"], config["results"])

# every job runs one task of the plan: `tcspec task STAGE ID SPEC`
TASK = (
    "TCSPEC_THREADS={threads} tcspec task {params.stage} {wildcards.id} {params.spec} "
    "--results {params.results} 2>&1 | tee {log}"
)


wildcard_constraints:
    id=ID_PATTERN,
