# Model: train the toy LM, or load a pretrained/checkpoint model once and record its dims.


rule prepare_model:
    input:
        unpack(WF.inputs("model")),
    output:
        done=WF.done("model"),
    log:
        WF.log("model"),
    benchmark:
        WF.benchmark("model")
    conda:
        "../envs/tcspec.yaml"
    threads: 2
    resources:
        mem_mb=WF.resource("model", "mem_mb"),
        gpu=WF.resource("model", "gpu"),
    params:
        stage="model",
        spec=WF.spec_file,
        results=WF.results,
    shell:
        TASK


rule model:
    input:
        WF.targets("model"),
