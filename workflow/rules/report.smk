# Paper-style table (Markdown, CSV, LaTeX) and plot per task; `--report` collects them into one HTML page.


rule table:
    input:
        rows=lambda w: [f"{R}/{w.task}/{row}/metrics.json" for row in rows_for(w.task)],
    output:
        md=f"{R}/{{task}}/table.md",
        csv=f"{R}/{{task}}/table.csv",
        tex=f"{R}/{{task}}/table.tex",
        html=report(f"{R}/{{task}}/table.html", category="{task}", caption="../report/table.rst"),
        png=report(f"{R}/{{task}}/plot.png", category="{task}", caption="../report/plot.rst"),
    params:
        names=lambda w: [display_name(row) for row in rows_for(w.task)],
        profile=PROFILE,
        judge=lambda w: (scorer_spec(w.task) or {}).get("name"),
    resources:
        **job_resources("table"),
    log:
        f"{R}/logs/table/{{task}}.log",
    script:
        "../scripts/report.py"


# `snakemake budget_curve`: the config's budget_curve methods trained at each multiple of their scored-sample budget
# (budget rows <method>-x<k>; x1 is the method's own row), their plotted metrics against scored samples and against
# training minutes: the paper's learning curve, in miniature.
BUDGET = config["budget_curve"]
BUDGET_ROWS = [(m, k, m if k == 1 else f"{m}-x{k}") for m in BUDGET["methods"] for k in BUDGET["budgets"]]
if BUDGET["task"] not in KNOWN_TASKS:
    fail(f"{CONFIG_FILES}: budget_curve.task: unknown task '{BUDGET['task']}'")
check_rows([row for _, _, row in BUDGET_ROWS] + BUDGET["references"], f"{CONFIG_FILES}: budget_curve")


rule budget_curve:
    input:
        rows=[f"{R}/{BUDGET['task']}/{row}/metrics.json" for _, _, row in BUDGET_ROWS],
        references=[f"{R}/{BUDGET['task']}/{row}/metrics.json" for row in BUDGET["references"]],
    output:
        md=f"{R}/{BUDGET['task']}/budget_curve.md",
        csv=f"{R}/{BUDGET['task']}/budget_curve.csv",
        png=report(f"{R}/{BUDGET['task']}/budget_curve.png", category=BUDGET["task"], caption="../report/budget_curve.rst"),
    params:
        names=[METHODS[m]["name"] for m, _, _ in BUDGET_ROWS],
        budgets=[k for _, k, _ in BUDGET_ROWS],
        references=[display_name(row) for row in BUDGET["references"]],
        task=BUDGET["task"],
        profile=PROFILE,
    resources:
        **job_resources("budget_curve"),
    log:
        f"{R}/logs/budget_curve.log",
    script:
        "../scripts/budget_curve.py"
