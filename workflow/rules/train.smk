# Train (task, run, seed): the method's train() writes its model; model.json points at it. A run is a method, or a
# budget row of one (<method>-x<k>: common.smk, run_hparams).


rule train:
    input:
        base=f"{R}/base_model",
        prompts=f"{R}/data/{{task}}/train.jsonl",
        corpus=f"{R}/data/{{task}}/corpus.jsonl",
    output:
        f"{R}/{{task}}/{{run}}/seed{{seed}}/model.json",
    wildcard_constraints:
        run=GENERIC_TRAIN,
    params:
        method=lambda w: split_row(w.run)[0],
        launchable=lambda w: METHODS[split_row(w.run)[0]].get("launchable", False),
        hparams=lambda w: run_hparams(w.run, w.task),
        reward=lambda w: config["reward"][w.task],
        sampling=lambda w: train_sampling(w.task),
        device=config["device"],
    threads: heavy_threads()
    resources:
        **job_resources("train"),
    benchmark:
        f"{R}/{{task}}/{{run}}/seed{{seed}}/train.benchmark.tsv"
    log:
        f"{R}/{{task}}/{{run}}/seed{{seed}}/train.log",
    script:
        "../scripts/train.py"
