# Train (task, method, seed): the method's train() writes its model; model.json points at it.


rule train:
    input:
        base=f"{R}/base_model",
        prompts=f"{R}/data/{{task}}/train.jsonl",
        corpus=f"{R}/data/{{task}}/corpus.jsonl",
    output:
        f"{R}/{{task}}/{{method}}/seed{{seed}}/model.json",
    wildcard_constraints:
        method=GENERIC_TRAIN,
    params:
        hparams=lambda w: hparams(w.method, w.task),
        reward=lambda w: config["reward"][w.task],
        sampling=lambda w: train_sampling(w.task),
        device=config["device"],
    threads: heavy_threads()
    resources:
        mem_mb=12000,
        gpu=GPUS,
    benchmark:
        f"{R}/{{task}}/{{method}}/seed{{seed}}/train.benchmark.tsv"
    script:
        "../scripts/train.py"
