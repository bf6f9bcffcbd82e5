# Tables: comparison tables and plots from every metrics.json of the spec.


rule build_tables:
    input:
        unpack(WF.inputs("tables")),
    output:
        done=WF.done("tables"),
    log:
        WF.log("tables"),
    benchmark:
        WF.benchmark("tables")
    conda:
        "../envs/tcspec.yaml"
    threads: 1
    resources:
        mem_mb=WF.resource("tables", "mem_mb"),
        gpu=WF.resource("tables", "gpu"),
    params:
        stage="tables",
        spec=WF.spec_file,
        results=WF.results,
    shell:
        TASK


rule tables:
    input:
        WF.targets("tables"),
