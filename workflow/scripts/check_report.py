"""Open a `snakemake --report` page in headless Chromium: each task's table renders, and screenshots show it.

For every `<task>/table.html` the report embeds, this script
1. decodes the embedded page and has Chromium render it (`--dump-dom`), then requires the rendered DOM to hold the
   table's caption, its grouped headers and every cell of every row, in order;
2. opens the report itself with that table selected (the report's own `app.setView`, as a click on the result does)
   and takes a screenshot, `<out>/report-<task>.png`.

Chromium comes from the system (Debian: `apt-get install chromium`); nothing is fetched.

    .venv/bin/snakemake --report report.html && .venv/bin/python workflow/scripts/check_report.py report.html \
        --out results/reference/report
"""

from __future__ import annotations

import argparse
import base64
import json
import re
import shutil
import subprocess
import sys
import tempfile
from pathlib import Path
from urllib.parse import unquote_to_bytes

ROOT = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(ROOT))
from evaluation.report import html_cells  # noqa: E402

RESULTS = re.compile(r"^\s*var results = (\{.*\});?\s*$", flags=re.M)  # the report's own table of its results


def chromium() -> str:
    for name in ("chromium", "chromium-browser", "google-chrome"):
        if shutil.which(name):
            return name
    sys.exit("check_report: no Chromium on PATH (Debian: apt-get install chromium)")


def run_chromium(*args: str) -> str:
    cmd = [chromium(), "--headless", "--no-sandbox", "--disable-gpu", "--hide-scrollbars", *args]
    return subprocess.run(cmd, capture_output=True, text=True, timeout=120, check=True).stdout


def decode(uri: str) -> str:
    meta, _, data = uri.partition(",")
    raw = base64.b64decode(data) if meta.endswith(";base64") else unquote_to_bytes(data)
    return raw.decode("utf-8")


def check_table(page: str, task: str, workdir: Path) -> list[tuple[str, str]]:
    """Render one embedded table in Chromium: the rendered DOM must hold every caption, header and cell of the page,
    in order, with the task's caption and the Fluency group; returns the rendered cells, or exits naming the fault."""
    path = workdir / f"{task}.html"
    path.write_text(page, encoding="utf-8")
    rendered, written = html_cells(run_chromium("--dump-dom", path.as_uri())), html_cells(page)
    caption = next((text for tag, text in rendered if tag == "caption"), "")
    if rendered != written or not caption.startswith(f"Task {task}") or ("th", "Fluency") not in rendered:
        sys.exit(f"check_report: the {task} table did not render as written (caption {caption!r})")
    return rendered


def screenshot(report: Path, table_path: str, out: Path, workdir: Path) -> None:
    """The report with `table_path` selected, as a click on it shows it."""
    select = (
        "<script>window.addEventListener('load', () => setTimeout(() => app.setView({content: 'html', "
        f"contentPath: results[{table_path!r}].data_uri, resultPath: {table_path!r}}}), 300));</script>"
    )
    page = workdir / f"report-{out.stem}.html"
    head, body_end, tail = report.read_text(encoding="utf-8").rpartition("</body>")  # the last: scripts hold others
    page.write_text(head + select + body_end + tail, encoding="utf-8")
    run_chromium(f"--screenshot={out}", "--window-size=2200,1000", "--virtual-time-budget=5000", page.as_uri())
    if not out.is_file() or out.stat().st_size < 10_000:
        sys.exit(f"check_report: no screenshot of {table_path} was written")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("report", type=Path, help="the HTML file `snakemake --report` wrote")
    parser.add_argument("--out", type=Path, help="write report-<task>.png screenshots here")
    args = parser.parse_args()
    found = RESULTS.search(args.report.read_text(encoding="utf-8"))
    results = json.loads(found.group(1)) if found else {}
    tables = {
        Path(path).parent.name: (path, decode(entry["data_uri"]))
        for path, entry in results.items()
        if Path(path).name == "table.html"
    }
    if not tables:
        sys.exit(f"check_report: {args.report} embeds no <task>/table.html")
    with tempfile.TemporaryDirectory() as tmp:
        for task, (path, page) in sorted(tables.items()):
            rendered = check_table(page, task, Path(tmp))
            rows = sum(tag == "td" for tag, _ in rendered)
            print(f"{task}: Chromium rendered the table: {rows} cells, its caption and the grouped headers")
            if args.out:
                args.out.mkdir(parents=True, exist_ok=True)
                screenshot(args.report, path, args.out / f"report-{task}.png", Path(tmp))
                print(f"{task}: {args.out / f'report-{task}.png'}")


if __name__ == "__main__":
    main()
