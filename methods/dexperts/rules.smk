# DExperts trains two models per (task, seed), each its own job: the expert on the corpus's wanted texts and the
# anti-expert on its unwanted ones. A third job writes the ensemble manifest that model.json points at, measures the
# ensemble's held-out perplexity, and sums the two training jobs' benchmark files into train.benchmark.tsv (seconds
# added, peak memory the larger); its own time, an evaluation, is not counted.

DEXPERTS_RUN = f"{R}/{{task}}/dexperts/seed{{seed}}"
DEXPERTS_DECODING = ("alpha", "filter_top_p")  # read at generation time only: changing them retrains nothing


rule dexperts_expert:
    input:
        base=f"{R}/base_model",
        corpus=f"{R}/data/{{task}}/corpus.jsonl",
    output:
        directory(f"{DEXPERTS_RUN}/{{side}}"),
    wildcard_constraints:
        side="expert|antiexpert",
    params:
        hparams=lambda w: {k: v for k, v in hparams("dexperts", w.task).items() if k not in DEXPERTS_DECODING},
        device=config["device"],
    threads: heavy_threads()
    resources:
        **job_resources("dexperts_expert"),
    benchmark:
        f"{DEXPERTS_RUN}/{{side}}.benchmark.tsv"
    log:
        f"{DEXPERTS_RUN}/{{side}}.log",
    script:
        "job_expert.py"


rule dexperts_ensemble:
    input:
        base=f"{R}/base_model",
        corpus=f"{R}/data/{{task}}/corpus.jsonl",
        expert=f"{DEXPERTS_RUN}/expert",
        antiexpert=f"{DEXPERTS_RUN}/antiexpert",
        benchmarks=[f"{DEXPERTS_RUN}/expert.benchmark.tsv", f"{DEXPERTS_RUN}/antiexpert.benchmark.tsv"],
    output:
        ensemble=directory(f"{DEXPERTS_RUN}/ensemble"),
        model=f"{DEXPERTS_RUN}/model.json",
        benchmark=f"{DEXPERTS_RUN}/train.benchmark.tsv",
    params:
        hparams=lambda w: hparams("dexperts", w.task),
        device=config["device"],
    threads: heavy_threads()
    resources:
        **job_resources("dexperts_ensemble"),
    log:
        f"{DEXPERTS_RUN}/train.log",
    script:
        "job_ensemble.py"
