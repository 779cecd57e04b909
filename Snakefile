# Reward-driven unlearning benchmark: every method x every task, one set of shared evaluators.
# Read the DAG from workflow/rules/: data -> train -> generate -> evaluate -> report.

configfile: "workflow/config/config.yaml"


report: "workflow/report/workflow.rst"


include: "workflow/rules/common.smk"
include: "workflow/rules/data.smk"
include: "workflow/rules/train.smk"
include: "workflow/rules/generate.smk"
include: "workflow/rules/evaluate.smk"
include: "workflow/rules/report.smk"
include: "workflow/rules/scorers.smk"


for _method_rules in METHOD_RULES.values():

    include: _method_rules


# Light jobs run where Snakemake runs, not as cluster jobs.
localrules:
    all,
    prepare_train_prompts,
    prepare_eval_prompts,
    aggregate_seeds,
    table,
    budget_curve,


rule all:
    input:
        expand(f"{R}/{{task}}/table.{{ext}}", task=TASKS, ext=["md", "csv", "tex"]),
        expand(f"{R}/{{task}}/plot.png", task=TASKS),


if CLUSTER and not workflow.remote_exec:
    check_cluster_fit()
