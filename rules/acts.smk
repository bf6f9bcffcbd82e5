# Acts: one forward pass per batch caches every hook the dictionaries read.


rule cache_activations:
    input:
        unpack(WF.inputs("acts")),
    output:
        done=WF.done("acts"),
    log:
        WF.log("acts"),
    benchmark:
        WF.benchmark("acts")
    conda:
        "../envs/tcspec.yaml"
    threads: 2
    resources:
        mem_mb=WF.resource("acts", "mem_mb"),
        disk_mb=WF.resource("acts", "disk_mb"),
        gpu=WF.resource("acts", "gpu"),
    params:
        stage="acts",
        spec=WF.spec_file,
        results=WF.results,
    shell:
        TASK


rule acts:
    input:
        WF.targets("acts"),
