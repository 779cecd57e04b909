# Paper-style table (Markdown, CSV, LaTeX) and plot per task; `--report` collects them into one HTML page.


rule table:
    input:
        rows=lambda w: [f"{R}/{w.task}/{row}/metrics.json" for row in rows_for(w.task)],
    output:
        md=f"{R}/{{task}}/table.md",
        csv=report(f"{R}/{{task}}/table.csv", category="{task}", caption="../report/table.rst"),
        tex=f"{R}/{{task}}/table.tex",
        png=report(f"{R}/{{task}}/plot.png", category="{task}", caption="../report/plot.rst"),
    params:
        names=lambda w: [display_name(row) for row in rows_for(w.task)],
        profile=PROFILE,
    script:
        "../scripts/report.py"
