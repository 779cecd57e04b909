# Base model once as a transformers directory; each task's train prompts, eval prompts and labelled corpus.
# Training inputs read only training settings (train_data_settings), so that evaluating on other prompts or with
# other settings reruns generation and evaluation and never a training job.


def eval_sources(task):
    """The files a task's eval prompts come from; sentiment eval prompts are typed by the base model first, unless
    `sentiment_prompts.typed` names a file of prompts typed already."""
    d = config["data"][task]
    if KNOWN_TASKS[task].prompts == "sentiment":
        return {"eval": config.get("sentiment_prompts", {}).get("typed") or f"{R}/data/sentiment_types.jsonl"}
    sources = {"eval": d["eval_prompts"]}
    if KNOWN_TASKS[task].prompts == "wikitext":
        sources["train"] = d["train_prompts"]  # one file for both is split by article
    return sources


rule base_model:
    input:
        # only the tiny test model reads the prompts (to train its tokenizer)
        prompts=[config["data"][t]["train_prompts"] for t in TASKS] if config["base_model"] == "tiny" else [],
    output:
        directory(f"{R}/base_model"),
    params:
        spec=config["base_model"],
        tiny=canonical(config.get("tiny_model", {})),
    resources:
        **job_resources("base_model"),
    log:
        f"{R}/logs/base_model.log",
    script:
        "../scripts/base_model.py"


rule type_sentiment_prompts:
    # DExperts' split: a prompt is negative, neutral or positive by the sentiment of the base model's continuations.
    input:
        base=f"{R}/base_model",
        candidates=config.get("sentiment_prompts", {}).get("candidates", "data/rtp/dev.jsonl"),
    output:
        f"{R}/data/sentiment_types.jsonl",
    params:
        settings=canonical(config.get("sentiment_prompts", {})),
        device=config["device"],
    threads: heavy_threads()
    resources:
        **job_resources("type_sentiment_prompts"),
    benchmark:
        f"{R}/data/sentiment_types.benchmark.tsv"
    log:
        f"{R}/logs/type_sentiment_prompts.log",
    script:
        "../scripts/type_sentiment_prompts.py"


rule prepare_train_prompts:
    input:
        train=lambda w: config["data"][w.task]["train_prompts"],
    output:
        train=f"{R}/data/{{task}}/train.jsonl",
    params:
        settings=lambda w: canonical(train_data_settings(w.task)),
    resources:
        **job_resources("prepare_train_prompts"),
    log:
        f"{R}/logs/prepare_train_prompts/{{task}}.log",
    script:
        "../scripts/prepare_prompts.py"


rule prepare_eval_prompts:
    input:
        unpack(lambda w: eval_sources(w.task)),
    output:
        eval=f"{R}/data/{{task}}/eval.jsonl",
    params:
        settings=lambda w: canonical(config["data"][w.task]),
        max_eval_prompts=lambda w: eval_settings(w.task)["max_prompts"],
    resources:
        **job_resources("prepare_eval_prompts"),
    log:
        f"{R}/logs/prepare_eval_prompts/{{task}}.log",
    script:
        "../scripts/prepare_prompts.py"


rule prepare_corpus:
    input:
        lambda w: config["data"][w.task].get("corpus", config["data"][w.task]["train_prompts"]),
    output:
        f"{R}/data/{{task}}/corpus.jsonl",
    params:
        settings=lambda w: canonical(train_data_settings(w.task)),
        scorer=lambda w: canonical(scorer_spec(w.task)),
    resources:
        **job_resources("prepare_corpus"),
    log:
        f"{R}/logs/prepare_corpus/{{task}}.log",
    script:
        "../scripts/prepare_corpus.py"
