# Base model once as a transformers directory; each task's train and eval prompts and its labelled corpus.


rule base_model:
    input:
        prompts=[config["data"][t]["train_prompts"] for t in TASKS],
    output:
        directory(f"{R}/base_model"),
    params:
        spec=config["base_model"],
        tiny=config.get("tiny_model", {}),
    resources:
        mem_mb=4000,
    log:
        f"{R}/logs/base_model.log",
    script:
        "../scripts/base_model.py"


rule prepare_prompts:
    input:
        train=lambda w: config["data"][w.task]["train_prompts"],
        eval=lambda w: config["data"][w.task]["eval_prompts"],
    output:
        train=f"{R}/data/{{task}}/train.jsonl",
        eval=f"{R}/data/{{task}}/eval.jsonl",
    params:
        settings=lambda w: config["data"][w.task],
        max_eval_prompts=config["eval"]["max_prompts"],
    resources:
        mem_mb=1000,
    script:
        "../scripts/prepare_prompts.py"


rule prepare_corpus:
    input:
        lambda w: config["data"][w.task].get("corpus", config["data"][w.task]["train_prompts"]),
    output:
        f"{R}/data/{{task}}/corpus.jsonl",
    resources:
        mem_mb=2000,
    script:
        "../scripts/prepare_corpus.py"
