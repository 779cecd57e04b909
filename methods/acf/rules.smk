# ACF's training run as jobs: round after round, sample / train_R / train_LM (methods/acf/schedule.py says what each
# reads). In the paper's parallel scheme a round's jobs depend only on the round before, so Snakemake runs them side
# by side and they share the cores; with `parallel: false` they chain. acf_finish writes what the generic train rule
# would: model.json, train.benchmark.tsv (every round job's seconds summed, peak memory the maximum) and
# train_stats.json (each job's stats, the wall-clock span, held-out perplexity).
from methods.acf.acf import load_config, lm_path, r_path, samples_path, stats_path
from methods.acf.schedule import Schedule
from core.errors import SuiteError

ACF_RUN = f"{R}/{{task}}/acf/seed{{seed}}"
ACF_BASE = f"{R}/base_model"


def acf_config(task):
    try:
        return load_config(hparams("acf", task))
    except SuiteError as exc:
        fail(str(exc))


if any(split_row(row)[0] == "acf" for row in config["methods"]):
    for _task in TASKS:
        acf_config(_task)  # a bad hyperparameter fails now, in one line


def acf_schedule(w):
    cfg = acf_config(w.task)
    return Schedule(cfg.num_rounds, cfg.parallel)


def acf_rounds(w):
    return f"{R}/{w.task}/acf/seed{w.seed}/rounds"


def acf_threads(kind):
    """Jobs that run side by side split the cores (the LM job, the heaviest, takes the remainder), one core at least
    each (with fewer cores than jobs, Snakemake runs them in turn); a lone job takes all."""

    def threads(w):
        n = acf_schedule(w).concurrent(int(w.i))
        share = max(1, job_cores() // n)
        return max(1, job_cores() - (n - 1) * share) if kind == "lm" else share

    return threads


def acf_torch_threads(kind):
    """The job's share of this machine's CPUs: `--cores` may exceed them, and oversubscribed torch threads crawl."""
    threads = acf_threads(kind)
    return lambda w: max(1, min(os.cpu_count() or 1, (os.cpu_count() or 1) * threads(w) // job_cores()))


def acf_params():
    return dict(
        hparams=lambda w: hparams("acf", w.task),
        reward=lambda w: config["reward"][w.task],
        sampling=lambda w: train_sampling(w.task),
        device=config["device"],
    )


rule acf_sample:
    input:
        model=lambda w: str(lm_path(acf_rounds(w), acf_schedule(w).sample_from(int(w.i)), ACF_BASE)),
        base=ACF_BASE,
        prompts=f"{R}/data/{{task}}/train.jsonl",
        corpus=f"{R}/data/{{task}}/corpus.jsonl",
    output:
        samples=f"{ACF_RUN}/rounds/samples{{i}}.jsonl",
        stats=f"{ACF_RUN}/rounds/sample{{i}}.json",
    wildcard_constraints:
        i="[0-9]+",
    params:
        **acf_params(),
        torch_threads=acf_torch_threads("sample"),
    threads: acf_threads("sample")
    resources:
        **job_resources("acf_sample"),
    benchmark:
        f"{ACF_RUN}/rounds/sample{{i}}.benchmark.tsv"
    log:
        f"{ACF_RUN}/rounds/sample{{i}}.log",
    script:
        "job.py"


rule acf_train_r:
    input:
        samples=lambda w: str(samples_path(acf_rounds(w), acf_schedule(w).r_data(int(w.i)))),
        init=lambda w: [] if acf_schedule(w).r_init(int(w.i)) is None else str(r_path(acf_rounds(w), acf_schedule(w).r_init(int(w.i)))),
        sampler=lambda w: str(lm_path(acf_rounds(w), acf_schedule(w).sample_from(acf_schedule(w).r_data(int(w.i))), ACF_BASE)) if acf_config(w.task).consistency_coef else [],
        base=ACF_BASE,
        prompts=f"{R}/data/{{task}}/train.jsonl",
        corpus=f"{R}/data/{{task}}/corpus.jsonl",
    output:
        model=temp(directory(f"{ACF_RUN}/rounds/r{{i}}")),
        stats=f"{ACF_RUN}/rounds/r{{i}}.json",
    wildcard_constraints:
        i="[0-9]+",
    params:
        **acf_params(),
        torch_threads=acf_torch_threads("r"),
    threads: acf_threads("r")
    resources:
        **job_resources("acf_train_r"),
    benchmark:
        f"{ACF_RUN}/rounds/r{{i}}.benchmark.tsv"
    log:
        f"{ACF_RUN}/rounds/r{{i}}.log",
    script:
        "job.py"


rule acf_train_lm:
    input:
        init=lambda w: str(lm_path(acf_rounds(w), int(w.i) - 1, ACF_BASE)),
        r=lambda w: str(r_path(acf_rounds(w), acf_schedule(w).lm_r(int(w.i)))),
        samples=lambda w: str(samples_path(acf_rounds(w), acf_schedule(w).lm_samples(int(w.i)))),
        base=ACF_BASE,
        prompts=f"{R}/data/{{task}}/train.jsonl",
        corpus=f"{R}/data/{{task}}/corpus.jsonl",
    output:
        model=temp(directory(f"{ACF_RUN}/rounds/lm{{i}}")),
        stats=f"{ACF_RUN}/rounds/lm{{i}}.json",
    wildcard_constraints:
        i="[0-9]+",
    params:
        **acf_params(),
        torch_threads=acf_torch_threads("lm"),
    threads: acf_threads("lm")
    resources:
        **job_resources("acf_train_lm"),
    benchmark:
        f"{ACF_RUN}/rounds/lm{{i}}.benchmark.tsv"
    log:
        f"{ACF_RUN}/rounds/lm{{i}}.log",
    script:
        "job.py"


rule acf_finish:
    input:
        model=lambda w: str(lm_path(acf_rounds(w), acf_config(w.task).num_rounds, ACF_BASE)),
        stats=lambda w: [str(stats_path(acf_rounds(w), kind, i)) for kind, i in acf_schedule(w).jobs()],
        base=ACF_BASE,
        prompts=f"{R}/data/{{task}}/train.jsonl",
        corpus=f"{R}/data/{{task}}/corpus.jsonl",
    output:
        model=f"{ACF_RUN}/model.json",
        benchmark=f"{ACF_RUN}/train.benchmark.tsv",
        stats=f"{ACF_RUN}/train_stats.json",
    params:
        **acf_params(),
        benchmarks=lambda w: [f"{acf_rounds(w)}/{kind}{i}.benchmark.tsv" for kind, i in acf_schedule(w).jobs()],
        torch_threads=lambda w: os.cpu_count() or 1,
    threads: heavy_threads()
    resources:
        **job_resources("acf_finish"),
    log:
        f"{ACF_RUN}/train.log",
    script:
        "job.py"
