# Train: every sweep point of one dictionary at one layer, in one pass over the cache.


rule train_dictionary:
    input:
        unpack(WF.inputs("train")),
    output:
        done=WF.done("train"),
    log:
        WF.log("train"),
    benchmark:
        WF.benchmark("train")
    conda:
        "../envs/tcspec.yaml"
    threads: 1
    resources:
        mem_mb=WF.resource("train", "mem_mb"),
        gpu=WF.resource("train", "gpu"),
    params:
        stage="train",
        spec=WF.spec_file,
        results=WF.results,
    shell:
        TASK


rule train:
    input:
        WF.targets("train"),
