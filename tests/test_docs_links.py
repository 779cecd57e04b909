"""Every relative link in the README, docs/, the method READMEs and results/reference/README.md resolves: to a file
or folder of the repository and, where it names one, to a heading of the file it points at."""

import re
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
PAGES = sorted(
    [
        ROOT / "README.md",
        ROOT / "results/reference/README.md",
        *ROOT.glob("docs/*.md"),
        *ROOT.glob("methods/*/README.md"),
    ]
)
LINK = re.compile(r"!?\[[^\]]*\]\(([^)\s]+)(?:\s+\"[^\"]*\")?\)")
CODE = re.compile(r"^(```|~~~).*?^\1", flags=re.M | re.S)


def prose(text: str) -> str:
    """The page without its code blocks and inline code, where brackets are not links."""
    return re.sub(r"`[^`\n]*`", "", CODE.sub("", text))


def anchors(page: Path) -> set[str]:
    """GitHub's heading anchors: lower case, punctuation dropped, spaces as hyphens, a repeat numbered -1, -2, ..."""
    found, times = set(), {}
    for line in CODE.sub("", page.read_text(encoding="utf-8")).splitlines():
        heading = re.match(r"#{1,6}\s+(.*?)\s*#*\s*$", line)
        if heading:
            slug = re.sub(r"[^\w\- ]", "", heading.group(1).lower()).replace(" ", "-")
            found.add(f"{slug}-{times[slug]}" if slug in times else slug)
            times[slug] = times.get(slug, 0) + 1
    return found


def broken_links(page: Path) -> list[str]:
    broken = []
    for target in LINK.findall(prose(page.read_text(encoding="utf-8"))):
        if re.match(r"[a-z][a-z0-9+.-]*:", target):  # https:, mailto:: not ours to check
            continue
        path, _, anchor = target.partition("#")
        dest = (page.parent / path).resolve() if path else page
        if not dest.exists() or ROOT not in (dest, *dest.parents):
            broken.append(f"{target}: no such file")
        elif anchor and dest.suffix == ".md" and anchor not in anchors(dest):
            broken.append(f"{target}: no heading '#{anchor}' in {dest.relative_to(ROOT)}")
    return broken


def test_the_pages_are_found():
    assert ROOT / "README.md" in PAGES and len([p for p in PAGES if p.parent.name == "docs"]) >= 5


@pytest.mark.parametrize("page", PAGES, ids=lambda p: str(p.relative_to(ROOT)))
def test_every_relative_link_resolves(page):
    assert broken_links(page) == []


def test_a_broken_link_and_a_missing_heading_are_caught(tmp_path, monkeypatch):
    monkeypatch.setattr(f"{__name__}.ROOT", tmp_path)
    (tmp_path / "other.md").write_text("# Some heading, with punctuation\n## Twice\n## Twice\n")
    page = tmp_path / "page.md"
    page.write_text(
        "[ok](other.md#some-heading-with-punctuation) [ok](other.md#twice-1) [web](https://example.org/x)\n"
        "`[code](nowhere.md)`\n```\n[block](nowhere.md)\n```\n"
        "[gone](nowhere.md) [bad anchor](other.md#nothing) [self](#missing)\n"
    )
    assert broken_links(page) == [
        "nowhere.md: no such file",
        "other.md#nothing: no heading '#nothing' in other.md",
        "#missing: no heading '#missing' in page.md",
    ]
