# Generate (task, row, seed): N samples per eval prompt from the row's trained model, for each of the task's decodings.


rule generate:
    input:
        model=lambda w: f"{R}/{w.task}/{trained_as(w.row)}/seed{w.seed}/model.json",
        prompts=f"{R}/data/{{task}}/eval.jsonl",
    output:
        f"{R}/{{task}}/{{row}}/seed{{seed}}/generations.jsonl",
    params:
        method=lambda w: split_row(w.row)[0],
        variant=lambda w: canonical(variant_spec(w.row).get("generate", {})),
        eval=lambda w: canonical(eval_settings(w.task)),
        device=config["device"],
    threads: heavy_threads()
    resources:
        **job_resources("generate"),
    benchmark:
        f"{R}/{{task}}/{{row}}/seed{{seed}}/generate.benchmark.tsv"
    log:
        f"{R}/{{task}}/{{row}}/seed{{seed}}/generate.log",
    script:
        "../scripts/generate.py"
