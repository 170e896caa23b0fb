"""The README's Layout section names every module of the package, and names no file that does not exist."""

import re
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
PACKAGE = ROOT / "src" / "ehrbert"


def layout_block() -> str:
    text = (ROOT / "README.md").read_text()
    section = text[text.index("## Layout") :]
    return section[section.index("```") + 3 : section.index("```", section.index("```") + 3)]


def test_layout_names_every_module_and_only_real_ones():
    named = set(re.findall(r"\b([a-z_]+\.py)\b", layout_block()))
    modules = {p.name for p in PACKAGE.rglob("*.py") if p.name != "__init__.py"}
    modules |= {p.name for folder in ("tests", "benchmarks") for p in (ROOT / folder).glob("*.py") if p.name in named}
    assert not modules - named, f"README Layout misses {sorted(modules - named)}"
    assert not named - modules, f"README Layout names files that do not exist: {sorted(named - modules)}"


def test_layout_top_level_entries_exist():
    for line in layout_block().splitlines():
        entry = line.split(maxsplit=1)[0] if line and not line.startswith(" ") else None
        if entry:
            assert (ROOT / entry.rstrip("/")).exists(), f"README Layout names {entry}, which is not in the tree"


def test_readme_shows_the_last_benchmark():
    """`make bench` writes reports/benchmark.md and the same tables into the README's Speed section."""
    sys.path.insert(0, str(ROOT / "benchmarks"))
    try:
        import bench
    finally:
        sys.path.pop(0)
    text = (ROOT / "README.md").read_text()
    start, end = (text.index(marker) for marker in bench.README_MARKERS)
    shown = text[start + len(bench.README_MARKERS[0]) : end]
    assert shown == bench.readme_body((ROOT / "reports" / "benchmark.md").read_text())


def first_table(text: str) -> list[list[str]]:
    """The cells of the first Markdown table in `text`, without its header and rule, each row without its label."""
    lines = [line for line in text.splitlines() if line.startswith("|")]
    return [[cell.strip() for cell in line.strip().strip("|").split("|")][1:] for line in lines[2:]]


def test_readme_table2_is_the_compare_stages():
    """README's Table 2 has short labels; its figures are those `compare` wrote to reports/table2.md, row for row."""
    readme = (ROOT / "README.md").read_text()
    section = readme[readme.index("## Main results") :]
    report = (ROOT / "reports" / "table2.md").read_text()
    shown = first_table(section[: section.index("\n## ")])
    written = first_table(report[: report.index("\n### ")])
    assert shown == written, "README's Table 2 differs from reports/table2.md: copy its figures again"
