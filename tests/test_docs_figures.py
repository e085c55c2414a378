"""The published figures point at files that hold them (README.md, docs/*.md).

Numbers in README and docs come from runs whose reports and raw rows are committed (docs/<report folder>/,
benchmarks/results/). These tests keep the pointers true: every cited result file exists, and the README's
demo excerpt is, row for row, the table of the report it names. They read files only (no run).
"""

from __future__ import annotations

import re
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
DOCS = [ROOT / "README.md", *sorted((ROOT / "docs").glob("*.md"))]
CITED = re.compile(r"(?<![\w/.<-])((?:docs|benchmarks/results)/[\w./-]*\w\.(?:md|json|csv|png|yaml|txt))")
LINK = re.compile(r"\]\(([^)#\s]+)\)")


@pytest.mark.parametrize("doc", DOCS, ids=lambda p: p.name)
def test_every_cited_result_file_and_relative_link_exists(doc: Path) -> None:
    """A report folder renamed, or a raw-rows file cited before it was committed, leaves a figure without its
    source. Paths under docs/ and benchmarks/results/ are read from the repository root; Markdown links from
    the document's folder."""
    text = doc.read_text(encoding="utf-8")
    missing = sorted({m.group(1) for m in CITED.finditer(text) if not (ROOT / m.group(1)).exists()}
                     | {f"link {m.group(1)}" for m in LINK.finditer(text)
                        if "://" not in m.group(1) and not (doc.parent / m.group(1)).exists()})
    assert not missing, f"{doc.relative_to(ROOT)} cites files that are not in the repository: {missing}"


def test_the_readme_demo_excerpt_is_the_table_of_the_report_it_names() -> None:
    """The README's demo table is an excerpt of one committed report (``Excerpt of `demo_run/results.md` …;
    the full report is in docs/<folder>/report.md``): each of its lines is a line of that report's results.md,
    and its data rows are the report's, in order."""
    readme = (ROOT / "README.md").read_text(encoding="utf-8")
    start = readme.index("Excerpt of `demo_run/results.md`")
    folder = re.search(r"\(docs/([\w.-]+)/report\.md\)", readme[start:])
    assert folder, "the excerpt names no report folder"
    lines = readme[start:].splitlines()
    first = next(i for i, line in enumerate(lines) if line.startswith("| run |"))
    table = []
    for line in lines[first:]:
        if not line.startswith("|"):
            break
        table.append(line)
    report = (ROOT / "docs" / folder.group(1) / "results.md").read_text(encoding="utf-8").splitlines()
    assert len(table) >= 3 and all(line in report for line in table), (
        f"README's demo excerpt differs from docs/{folder.group(1)}/results.md: "
        f"{[line for line in table if line not in report]}")
    at = report.index(table[0])
    assert report[at: at + len(table)] == table  # the same rows, in the same order, none left out between
