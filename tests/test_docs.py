"""The README and the documentation site: size, generated result tables up to date, links that resolve.

The tables in README.md and docs/ are written by ``benchmarks/tables.py`` from ``benchmarks/results/``; these tests
fail when a block differs from what the saved results give (rerun ``python benchmarks/tables.py``). The site build
itself (``mkdocs build --strict``) runs in ``.ci/run``; here it runs only when mkdocs is installed (the docs extra).
"""
import importlib.util
import re
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
README = ROOT / "README.md"
DOCS = ROOT / "docs"


@pytest.fixture(scope="module")
def tables():
    spec = importlib.util.spec_from_file_location("cmbrl_tables", ROOT / "benchmarks" / "tables.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_readme_is_short():
    assert len(README.read_text()) <= 12_000


def test_generated_tables_are_up_to_date(tables):
    assert tables.stale() == [], "run: python benchmarks/tables.py"


def test_readme_summary_is_the_scripts_output_with_a_line_per_algorithm_and_dataset(tables):
    block = re.search(r"<!-- summary:start -->\n(.*?)<!-- summary:end -->", README.read_text(), re.S)
    assert block is not None, "README.md lost its results summary block"
    assert block.group(1).strip() == tables.render("summary")
    rows = [line for line in block.group(1).splitlines() if line.startswith("| ") and "---" not in line][1:]
    assert len(rows) == len(tables.SUMMARY_ROWS) + len(tables.SUMMARY_FINETUNE)
    for row in rows:  # score, data, BC, budget, link
        cells = [c.strip() for c in row.strip("|").split("|")]
        assert re.match(r"\*\*-?\d+\.\d\*\* ± \d+\.\d \(\d\)$", cells[2]), row
        assert re.match(r"-?\d+\.\d$", cells[3]) and re.match(r"-?\d+\.\d ± \d+\.\d$", cells[4]), row
        assert re.match(r"\[[\w-]+\]\(docs/algorithms/[\w-]+\.md#[\w-]+\) \(`\w+`\)$", cells[6]), row


def test_a_stale_or_unknown_block_is_reported(tables, tmp_path):
    page = tmp_path / "page.md"
    fresh = tables.rewrite("<!-- table/learning_short:start -->\n<!-- table/learning_short:end -->\n")
    page.write_text(fresh)
    assert tables.stale([page]) == []
    page.write_text(fresh.replace("22.7 ± 2.9", "99.9 ± 2.9"))  # a hand-edited number
    assert tables.stale([page]) == [f"{page}: table/learning_short"]
    page.write_text("<!-- table/no_such_folder:start -->\n<!-- table/no_such_folder:end -->\n")
    assert "unknown table block 'table/no_such_folder'" in tables.stale([page])[0]


def test_tables_are_computed_from_the_saved_files(tables):
    # the learning table's numbers are those of results.csv (mean and population std over the finished seeds)
    rows = [r for r in tables.read_results("learning_short") if r["algo"] == "mopo"
            and r["dataset"] == "cmbrl/hopper/medium-replay-v0"]
    mean, std = tables.mean_std([r["score"] for r in rows])
    assert f"| mopo | {mean:.1f} ± {std:.1f} | 3/3 |" in tables.render("table/learning_short")
    # the calibration tables are those examples/calibration.py --summary 1 saved in summary.md
    summary = (ROOT / "benchmarks" / "results" / "calibration" / "summary.md").read_text()
    for kind in ("penalties", "reward", "agreement", "halting"):
        assert tables.render(f"calibration/{kind}") in summary


def _links(path: Path) -> list[str]:
    text = re.sub(r"```.*?```", "", path.read_text(), flags=re.S)
    return [target for target in re.findall(r"\]\(([^)\s]+)\)", text) if "://" not in target]


def test_readme_links_resolve():
    for target in _links(README):
        if not target.startswith("#"):
            assert (ROOT / target.split("#")[0]).exists(), target


def test_docs_links_to_pages_and_saved_results_resolve():
    """What mkdocs --strict checks, without mkdocs: results/... is benchmarks/results/... (the docs hook)."""
    for page in DOCS.rglob("*.md"):
        for target in _links(page):
            target = target.split("#")[0]
            if not target:
                continue
            resolved = (page.parent / target).resolve()
            if (DOCS / "results") in resolved.parents:
                resolved = ROOT / "benchmarks" / "results" / resolved.relative_to(DOCS / "results")
            assert resolved.exists(), f"{page.relative_to(ROOT)}: {target}"


def test_every_page_is_in_the_navigation():
    nav = (ROOT / "mkdocs.yml").read_text()
    optional = {"private_internals.md"}  # added to the navigation by docs/hooks/cmbrl_docs.py when present
    for page in DOCS.rglob("*.md"):
        name = page.relative_to(DOCS).as_posix()
        if not name.startswith("hooks/") and name not in optional:
            assert f" {name}\n" in nav, f"{name} is not in mkdocs.yml's nav"


@pytest.mark.skipif(shutil.which("mkdocs") is None and importlib.util.find_spec("mkdocs") is None,
                    reason="mkdocs not installed (pip install -e '.[docs]'); .ci/run builds the site")
def test_site_builds_strict(tmp_path):
    result = subprocess.run([sys.executable, "-m", "mkdocs", "build", "--strict", "--site-dir", str(tmp_path / "site")],
                            cwd=ROOT, capture_output=True, text=True, timeout=300,
                            env={**__import__("os").environ, "NO_MKDOCS_2_WARNING": "1"})
    assert result.returncode == 0, result.stderr[-3000:]
    assert (tmp_path / "site" / "api" / "agents" / "index.html").read_text().count("cmbrl.agents.SAC") > 0
