# One rule per training or evaluation pass: its outputs are the members of one group not
# yet done.

for p in WF.passes:

    rule:
        name:
            f"{p.stage}_{p.id.replace('-', '_').replace('.', '_')}"
        input:
            **WF.plan.inputs(p, WF.results),
        output:
            WF.pass_outputs(p),
        log:
            WF.pass_file(p, "log"),
        benchmark:
            WF.pass_file(p, "benchmark")
        conda:
            "../envs/tcspec.yaml"
        threads: p.resources["threads"]
        resources:
            mem_mb=p.resources["mem_mb"],
            runtime=p.resources["runtime"],
            disk_mb=p.resources.get("disk_mb", 0),
            gpu=p.resources["gpu"],
            slurm_partition=WF.partition_of(
                p.resources["gpu"], config.get("gpu_partition", "gpu")
            ),
        params:
            stage=p.stage,
            id=p.id,
            results=WF.results,
        shell:
            TASK
