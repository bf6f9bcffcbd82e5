# Export: trained dictionaries in other tools' formats (SAELens, sparsify, circuit-tracer).


rule export_dictionaries:
    input:
        unpack(WF.inputs("export")),
    output:
        done=WF.done("export"),
    log:
        WF.log("export"),
    benchmark:
        WF.benchmark("export")
    conda:
        "../envs/tcspec.yaml"
    threads: 1
    resources:
        mem_mb=WF.resource("export", "mem_mb"),
        gpu=WF.resource("export", "gpu"),
    params:
        stage="export",
        spec=WF.spec_file,
        results=WF.results,
    shell:
        TASK


rule export:
    input:
        WF.targets("export"),
