# Tokens: tokenize the corpus, pack BOS-prefixed contexts, split train/eval disjointly.


rule tokenize_corpus:
    input:
        unpack(WF.inputs("tokens")),
    output:
        done=WF.done("tokens"),
    log:
        WF.log("tokens"),
    benchmark:
        WF.benchmark("tokens")
    conda:
        "../envs/tcspec.yaml"
    threads: 1
    resources:
        mem_mb=WF.resource("tokens", "mem_mb"),
        gpu=WF.resource("tokens", "gpu"),
    params:
        stage="tokens",
        spec=WF.spec_file,
        results=WF.results,
    shell:
        TASK


rule tokens:
    input:
        WF.targets("tokens"),
