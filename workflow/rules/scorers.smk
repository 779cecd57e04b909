# Offline scorers the suite ships. Not part of `all` (the shipped head is used); run by name:
#   snakemake --cores 2 toxicity_head
# then copy {R}/scorers/minilm_toxicity/ to evaluation/heads/minilm_toxicity/ and {R}/scorers/ to
# results/reference/scorers/ to ship what it built.

# Head variants, each scored by 5-fold cross-validation on the train file; the best cross-validated ROC AUC ships.
TOXICITY_HEAD_VARIANTS = {
    # mean-pooled token states and a linear model; mean-last is the sentence embedding all-MiniLM-L6-v2 gives
    "mean-last": {"layers": [6], "pooling": "mean", "epochs": 20, "lr": 3.0e-3},
    "mean-all": {"layers": [1, 2, 3, 4, 5, 6], "pooling": "mean", "epochs": 20, "lr": 3.0e-3},
    # a per-token logit (linear or a 64-wide MLP), soft-max pooled over the text, plus the mean-pooled linear term
    "token-mlp-last": {"layers": [6], "pooling": "token", "hidden": 64},
    "token-linear": {"layers": [1, 2, 3, 4, 5, 6], "pooling": "token", "hidden": 0},
    "token-mlp": {"layers": [1, 2, 3, 4, 5, 6], "pooling": "token", "hidden": 64},
}


rule toxicity_head:
    input:
        train="data/rtp/train.jsonl",
        dev="data/rtp/dev.jsonl",
    output:
        weights=f"{R}/scorers/minilm_toxicity/head.safetensors",
        settings=f"{R}/scorers/minilm_toxicity/head.json",
        md=f"{R}/scorers/toxicity.md",
        csv=f"{R}/scorers/toxicity.csv",
        variants=f"{R}/scorers/toxicity_head_variants.csv",
    params:
        variants=TOXICITY_HEAD_VARIANTS,
        folds=5,
        seed=0,
    threads: 1  # small matrices; on the busy 2-core machine, 2 threads scored 2.5 times slower than 1
    resources:
        **job_resources("toxicity_head"),
    log:
        f"{R}/logs/toxicity_head.log",
    script:
        "../scripts/train_toxicity_head.py"
