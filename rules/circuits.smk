# Circuits: attribution through transcoders, path search and task studies.


rule analyze_circuit:
    input:
        unpack(WF.inputs("circuits")),
    output:
        done=WF.done("circuits"),
    log:
        WF.log("circuits"),
    benchmark:
        WF.benchmark("circuits")
    conda:
        "../envs/tcspec.yaml"
    threads: 1
    resources:
        mem_mb=WF.resource("circuits", "mem_mb"),
        gpu=WF.resource("circuits", "gpu"),
    params:
        stage="circuits",
        spec=WF.spec_file,
        results=WF.results,
    shell:
        TASK


rule circuits:
    input:
        WF.targets("circuits"),
