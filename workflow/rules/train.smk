# Train (task, run, seed): the method's train() writes its model; model.json points at it. A run is a method, or a
# budget row of one (<method>-x<k>: common.smk, run_hparams).


# The scored base-model samples of a task's training prompts, drawn once per task and seed for every method whose
# method.yaml says `base_samples: true` (methods/common/base_samples.py; the config's `base_samples` sets them).


rule base_samples:
    input:
        base=f"{R}/base_model",
        prompts=f"{R}/data/{{task}}/train.jsonl",
    output:
        samples=f"{BASE_SAMPLES}/samples.jsonl",
        stats=f"{BASE_SAMPLES}/stats.json",
    params:
        spec=lambda w: canonical(base_samples_spec(w.task)),
        reward=lambda w: canonical(config["reward"][w.task]),
        sampling=lambda w: canonical(train_sampling(w.task)),
        device=config["device"],
    threads: heavy_threads()
    resources:
        **job_resources("base_samples"),
    benchmark:
        f"{BASE_SAMPLES}/benchmark.tsv"
    log:
        f"{BASE_SAMPLES}/base_samples.log",
    script:
        "../scripts/base_samples.py"


rule train:
    input:
        unpack(lambda w: base_samples_input(split_row(w.run)[0])(w)),
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
        hparams=lambda w: canonical(run_hparams(w.run, w.task)),
        reward=lambda w: canonical(config["reward"][w.task]),
        sampling=lambda w: canonical(train_sampling(w.task)),
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
