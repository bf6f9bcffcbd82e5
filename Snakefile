"""tcspec: a YAML experiment spec compiled into a workflow.

snakemake -c2                                   # specs/quickstart.yaml, end to end
snakemake -c2 --config spec=specs/paper/gpt2_small.yaml
snakemake -c2 acts                              # one stage's targets
"""


configfile: "config/config.yaml"


include: "rules/common.smk"
include: "rules/tasks.smk"
include: "rules/passes.smk"


rule all:
    default_target: True
    input:
        WF.targets(),


onsuccess:
    publish_experiment(WF.plan, WF.results)
