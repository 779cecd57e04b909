"""Compile every task's `table.tex` on a US-letter page with 1-inch margins: no LaTeX error, no overfull line.

Each table goes into one `article` document beside the packages it needs (booktabs, graphicx), one table to a page,
and `pdflatex` (Debian: `apt-get install texlive-latex-recommended`) compiles it. Any error, or any line wider than
the text, fails with one line naming the table file; otherwise the PDF is written to `--out`.

    .venv/bin/python workflow/scripts/check_latex.py results/reference/mini --out results/reference/report
"""

from __future__ import annotations

import argparse
import re
import shutil
import subprocess
import sys
import tempfile
from pathlib import Path

PREAMBLE = r"""\documentclass{article}
\usepackage[letterpaper,margin=1in]{geometry}
\usepackage[T1]{fontenc}
\usepackage[utf8]{inputenc}
\usepackage{booktabs,graphicx}
\begin{document}
"""
OVERFULL = re.compile(r"^Overfull \\hbox \(([\d.]+)pt too wide\)", flags=re.M)


def compile_one(table: Path, workdir: Path) -> Path:
    """The table alone in a document; returns the PDF, or exits naming the fault."""
    doc = workdir / f"{table.parent.name}.tex"
    doc.write_text(PREAMBLE + f"\\input{{{table.resolve().as_posix()}}}\n\\end{{document}}\n", encoding="utf-8")
    cmd = ["pdflatex", "-interaction=nonstopmode", "-halt-on-error", doc.name]
    done = subprocess.run(cmd, cwd=workdir, capture_output=True, text=True, timeout=300)
    log = doc.with_suffix(".log").read_text(encoding="utf-8", errors="replace")
    error = next((line for line in log.splitlines() if line.startswith("! ")), None)
    if done.returncode or error:
        sys.exit(f"check_latex: {table}: pdflatex failed: {error or done.stdout.strip().splitlines()[-1]}")
    if wide := OVERFULL.findall(log):
        sys.exit(f"check_latex: {table}: a line is {max(map(float, wide))}pt wider than the text")
    return doc.with_suffix(".pdf")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("results", type=Path, help="a profile's results directory, e.g. results/mini")
    parser.add_argument("--out", type=Path, help="write table-<task>.pdf here")
    args = parser.parse_args()
    if not shutil.which("pdflatex"):
        sys.exit("check_latex: no pdflatex on PATH (Debian: apt-get install texlive-latex-recommended)")
    tables = sorted(args.results.glob("*/table.tex"))
    if not tables:
        sys.exit(f"check_latex: {args.results} holds no <task>/table.tex")
    with tempfile.TemporaryDirectory() as tmp:
        for table in tables:
            pdf = compile_one(table, Path(tmp))
            print(f"{table}: compiles, every line within the text width")
            if args.out:
                args.out.mkdir(parents=True, exist_ok=True)
                shutil.copyfile(pdf, args.out / f"table-{table.parent.name}.pdf")


if __name__ == "__main__":
    main()
