# DExperts trains two models per (task, seed), each its own job: the expert on the corpus's wanted texts and the
# anti-expert on its unwanted ones; the two sentiment tasks share theirs, roles swapped (dexperts_source). A third job
# writes the ensemble manifest that model.json points at, measures the ensemble's held-out perplexity, and sums the
# two training jobs' benchmark files into train.benchmark.tsv (seconds added, peak memory the larger); its own time,
# an evaluation, is not counted.

DEXPERTS_RUN = f"{R}/{{task}}/dexperts/seed{{seed}}"
DEXPERTS_DECODING = METHODS["dexperts"]["decoding_keys"]  # read at generation time only: they retrain nothing
DEXPERTS_MIRROR = {"sentiment-negative": "sentiment-positive"}  # the same corpus, each sentiment wanted by one


def dexperts_training(task):
    return {k: v for k, v in hparams("dexperts", task).items() if k not in DEXPERTS_DECODING}


def dexperts_source(task):
    """(the task whose run trains this task's two models, whether their roles are swapped).

    sentiment-negative's expert (texts judged negative: P(positive) < 1 - t) is sentiment-positive's anti-expert
    (P(positive) <= u) when u = 1 - t, and the other way round, when both tasks train with the same settings and seed:
    the same two models, trained once for both columns. Any difference in the settings trains them apart.
    """
    mirror = DEXPERTS_MIRROR.get(task)
    if mirror not in config["data"]:
        return task, False
    mine = dexperts_training(task)
    wanted, unwanted = mine.get("wanted_min_score"), mine.get("unwanted_max_score")
    mirrored = wanted is not None and unwanted is not None and abs(wanted + unwanted - 1) < 1e-9
    return (mirror, True) if mirrored and mine == dexperts_training(mirror) else (task, False)


def dexperts_model(w, side):
    task, swapped = dexperts_source(w.task)
    if swapped:
        side = "antiexpert" if side == "expert" else "expert"
    return f"{R}/{task}/dexperts/seed{w.seed}/{side}"


rule dexperts_expert:
    input:
        base=f"{R}/base_model",
        corpus=f"{R}/data/{{task}}/corpus.jsonl",
    output:
        directory(f"{DEXPERTS_RUN}/{{side}}"),
    wildcard_constraints:
        side="expert|antiexpert",
    params:
        job="methods.dexperts.jobs:expert",
        hparams=lambda w: canonical(dexperts_training(w.task)),
        device=config["device"],
    threads: heavy_threads()
    resources:
        **job_resources("dexperts_expert"),
    benchmark:
        f"{DEXPERTS_RUN}/{{side}}.benchmark.tsv"
    log:
        f"{DEXPERTS_RUN}/{{side}}.log",
    script:
        "../../workflow/scripts/method_job.py"


rule dexperts_ensemble:
    input:
        base=f"{R}/base_model",
        corpus=f"{R}/data/{{task}}/corpus.jsonl",
        expert=lambda w: dexperts_model(w, "expert"),
        antiexpert=lambda w: dexperts_model(w, "antiexpert"),
        benchmarks=lambda w: [f"{dexperts_model(w, side)}.benchmark.tsv" for side in ("expert", "antiexpert")],
    output:
        ensemble=directory(f"{DEXPERTS_RUN}/ensemble"),
        model=f"{DEXPERTS_RUN}/model.json",
        benchmark=f"{DEXPERTS_RUN}/train.benchmark.tsv",
    params:
        job="methods.dexperts.jobs:ensemble",
        hparams=lambda w: canonical(hparams("dexperts", w.task)),
        device=config["device"],
    threads: heavy_threads()
    resources:
        **job_resources("dexperts_ensemble"),
    log:
        f"{DEXPERTS_RUN}/train.log",
    script:
        "../../workflow/scripts/method_job.py"
