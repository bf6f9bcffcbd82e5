# One rule per stage over a task id; its config is read from the store, not the spec.

for stage in RULE_STAGES:

    rule:
        name:
            f"run_{stage}"
        input:
            unpack(WF.inputs(stage)),
        output:
            done=WF.done(stage),
        log:
            WF.log(stage),
        benchmark:
            WF.benchmark(stage)
        conda:
            "../envs/tcspec.yaml"
        threads: WF.resource(stage, "threads", 1)
        resources:
            mem_mb=WF.resource(stage, "mem_mb"),
            runtime=WF.resource(stage, "runtime"),
            disk_mb=WF.resource(stage, "disk_mb"),
            gpu=WF.resource(stage, "gpu"),
            slurm_partition=WF.partition(stage, config.get("gpu_partition", "gpu")),
        params:
            stage=stage,
            id=lambda wildcards: wildcards.id,
            results=WF.results,
        shell:
            TASK


for stage in STAGES:

    rule:
        name:
            stage
        input:
            WF.targets(stage),
