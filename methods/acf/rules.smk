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


def acf_job_inputs(kind):
    """The files job `kind` of round i reads, as methods/acf/schedule.py plans them (the job finds them itself; the
    DAG needs them to order the jobs)."""

    def inputs(w):
        s, rounds, i = acf_schedule(w), acf_rounds(w), int(w.i)
        lm = lambda j: str(lm_path(rounds, j, ACF_BASE))
        if kind == "sample":  # the first sample job draws the base model: the shared base samples
            return {"model": lm(s.sample_from(i)), **(base_samples_input("acf")(w) if i == s.sample_rounds()[0] else {})}
        if kind == "lm":
            r, samples = r_path(rounds, s.lm_r(i)), samples_path(rounds, s.lm_samples(i))
            return {"init": lm(i - 1), "r": str(r), "samples": str(samples)}
        files = {"samples": str(samples_path(rounds, s.r_data(i)))}
        if s.r_init(i) is not None:
            files["init"] = str(r_path(rounds, s.r_init(i)))
        if acf_config(w.task).consistency_coef:
            files["sampler"] = lm(s.sample_from(s.r_data(i)))
        return files

    return inputs


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


def acf_params(job):
    """What methods/acf/jobs.py's `job` reads; only sampling jobs score, so only they load the scorer."""
    params = dict(
        job=f"methods.acf.jobs:{job}",
        hparams=lambda w: canonical(hparams("acf", w.task)),
        sampling=lambda w: canonical(train_sampling(w.task)),
        device=config["device"],
    )
    return params | ({"reward": lambda w: canonical(config["reward"][w.task])} if job == "sample_job" else {})


rule acf_sample:
    input:
        unpack(acf_job_inputs("sample")),
        base=ACF_BASE,
        prompts=f"{R}/data/{{task}}/train.jsonl",
        corpus=f"{R}/data/{{task}}/corpus.jsonl",
    output:
        samples=f"{ACF_RUN}/rounds/samples{{i}}.jsonl",
        stats=f"{ACF_RUN}/rounds/sample{{i}}.json",
    wildcard_constraints:
        i="[0-9]+",
    params:
        **acf_params("sample_job"),
        torch_threads=acf_torch_threads("sample"),
    threads: acf_threads("sample")
    resources:
        **job_resources("acf_sample"),
    benchmark:
        f"{ACF_RUN}/rounds/sample{{i}}.benchmark.tsv"
    log:
        f"{ACF_RUN}/rounds/sample{{i}}.log",
    script:
        "../../workflow/scripts/method_job.py"


rule acf_train_r:
    input:
        unpack(acf_job_inputs("r")),
        base=ACF_BASE,
        prompts=f"{R}/data/{{task}}/train.jsonl",
        corpus=f"{R}/data/{{task}}/corpus.jsonl",
    output:
        model=temp(directory(f"{ACF_RUN}/rounds/r{{i}}")),
        stats=f"{ACF_RUN}/rounds/r{{i}}.json",
    wildcard_constraints:
        i="[0-9]+",
    params:
        **acf_params("round_job"),
        torch_threads=acf_torch_threads("r"),
    threads: acf_threads("r")
    resources:
        **job_resources("acf_train_r"),
    benchmark:
        f"{ACF_RUN}/rounds/r{{i}}.benchmark.tsv"
    log:
        f"{ACF_RUN}/rounds/r{{i}}.log",
    script:
        "../../workflow/scripts/method_job.py"


rule acf_train_lm:
    input:
        unpack(acf_job_inputs("lm")),
        base=ACF_BASE,
        prompts=f"{R}/data/{{task}}/train.jsonl",
        corpus=f"{R}/data/{{task}}/corpus.jsonl",
    output:
        model=temp(directory(f"{ACF_RUN}/rounds/lm{{i}}")),
        stats=f"{ACF_RUN}/rounds/lm{{i}}.json",
    wildcard_constraints:
        i="[0-9]+",
    params:
        **acf_params("round_job"),
        torch_threads=acf_torch_threads("lm"),
    threads: acf_threads("lm")
    resources:
        **job_resources("acf_train_lm"),
    benchmark:
        f"{ACF_RUN}/rounds/lm{{i}}.benchmark.tsv"
    log:
        f"{ACF_RUN}/rounds/lm{{i}}.log",
    script:
        "../../workflow/scripts/method_job.py"


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
        **acf_params("finish_job"),
        benchmarks=lambda w: [f"{acf_rounds(w)}/{kind}{i}.benchmark.tsv" for kind, i in acf_schedule(w).jobs()],
        torch_threads=lambda w: os.cpu_count() or 1,
    threads: heavy_threads()
    resources:
        **job_resources("acf_finish"),
    log:
        f"{ACF_RUN}/train.log",
    script:
        "../../workflow/scripts/method_job.py"
