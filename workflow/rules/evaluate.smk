# Score generations with the task's shared evaluator; then average over seeds.


rule evaluate:
    input:
        generations=f"{R}/{{task}}/{{row}}/seed{{seed}}/generations.jsonl",
        prompts=f"{R}/data/{{task}}/eval.jsonl",
        base=f"{R}/base_model",
    output:
        metrics=f"{R}/{{task}}/{{row}}/seed{{seed}}/metrics.json",
        per_prompt=f"{R}/{{task}}/{{row}}/seed{{seed}}/per_prompt.csv",
    params:
        scorer=lambda w: canonical(scorer_spec(w.task)),
        eval=lambda w: canonical(eval_settings(w.task)),
        device=config["device"],
    threads: heavy_threads()
    resources:
        **job_resources("evaluate"),
    log:
        f"{R}/{{task}}/{{row}}/seed{{seed}}/evaluate.log",
    script:
        "../scripts/evaluate.py"


rule aggregate_seeds:
    input:
        metrics=expand(f"{R}/{{{{task}}}}/{{{{row}}}}/seed{{seed}}/metrics.json", seed=SEEDS),
        train=lambda w: expand(f"{R}/{w.task}/{trained_as(w.row)}/seed{{seed}}/train.benchmark.tsv", seed=SEEDS),
        generate=expand(f"{R}/{{{{task}}}}/{{{{row}}}}/seed{{seed}}/generate.benchmark.tsv", seed=SEEDS),
    output:
        f"{R}/{{task}}/{{row}}/metrics.json",
    params:
        name=lambda w: display_name(w.row),
    resources:
        **job_resources("aggregate_seeds"),
    log:
        f"{R}/logs/aggregate_seeds/{{task}}/{{row}}.log",
    script:
        "../scripts/aggregate.py"
