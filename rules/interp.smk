# Interp: feature statistics, dashboards and the blind rating packet.


rule sample_features:
    input:
        unpack(WF.inputs("interp")),
    output:
        done=WF.done("interp"),
    log:
        WF.log("interp"),
    benchmark:
        WF.benchmark("interp")
    conda:
        "../envs/tcspec.yaml"
    threads: 1
    resources:
        mem_mb=WF.resource("interp", "mem_mb"),
        gpu=WF.resource("interp", "gpu"),
    params:
        stage="interp",
        spec=WF.spec_file,
        results=WF.results,
    shell:
        TASK


rule interp:
    input:
        WF.targets("interp"),
