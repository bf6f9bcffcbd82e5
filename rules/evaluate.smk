# Evaluate: sparsity and fidelity metrics, CE/KL with the dictionary spliced in.


rule evaluate_dictionary:
    input:
        unpack(WF.inputs("evaluate")),
    output:
        done=WF.done("evaluate"),
    log:
        WF.log("evaluate"),
    benchmark:
        WF.benchmark("evaluate")
    conda:
        "../envs/tcspec.yaml"
    threads: 1
    resources:
        mem_mb=WF.resource("evaluate", "mem_mb"),
        gpu=WF.resource("evaluate", "gpu"),
    params:
        stage="evaluate",
        spec=WF.spec_file,
        results=WF.results,
    shell:
        TASK


rule evaluate:
    input:
        WF.targets("evaluate"),
