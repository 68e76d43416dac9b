"""MkDocs hook of the cmbrl documentation (``mkdocs.yml``: ``hooks``).

- Publishes ``benchmarks/results/`` under ``results/`` in the site (figures, CSVs, the benchmarks' own ``table.md``
  pages), so the pages link the saved results where they live in the repository, without a copy in ``docs/``.
- Checks that every generated table block (``<!-- NAME:start -->`` ... ``<!-- NAME:end -->``) in the pages and the
  README equals what ``benchmarks/tables.py`` writes from the saved results: a stale block is a warning, so
  ``mkdocs build --strict`` fails until ``python benchmarks/tables.py`` is rerun.
- Adds ``docs/private_internals.md`` to the navigation when the page exists.
- Renders the docstrings' Sphinx roles (``:class:`~a.b.C` ``, ``:func:``, ...), which mkdocstrings' Google-style
  parser leaves as text, as plain code (``C``; ``a.b.C`` without the ``~``).
- Lays out the package as it is installed for the API reference: ``pyproject.toml`` maps ``cmbrl.agents`` to
  ``agents/`` (and so on), which mkdocstrings' static loader (griffe) cannot follow, so this module mirrors the
  installed layout as symlinks under ``build/docs_api/`` (git-ignored) when MkDocs loads it, before any page is
  rendered; ``mkdocs.yml`` points mkdocstrings there.
"""
from __future__ import annotations

import importlib.util
import logging
import re
from pathlib import Path

from mkdocs.structure.files import File

log = logging.getLogger("mkdocs.hooks.cmbrl_docs")
ROOT = Path(__file__).resolve().parents[2]
RESULTS = ROOT / "benchmarks" / "results"
OPTIONAL_PAGES = ()
API_SOURCE = ROOT / "build" / "docs_api"


def _package_dirs() -> dict[str, str]:
    """``[tool.setuptools.package-dir]`` of pyproject.toml: package name -> folder."""
    try:
        import tomllib
    except ModuleNotFoundError:  # Python 3.10
        return {"cmbrl": "cmbrl", "cmbrl.components": "components", "cmbrl.envs": "envs", "cmbrl.agents": "agents"}
    with open(ROOT / "pyproject.toml", "rb") as f:
        return tomllib.load(f)["tool"]["setuptools"]["package-dir"]


def mirror_installed_layout(target: Path = API_SOURCE) -> Path:
    """``target/cmbrl/`` with the package's files and subpackages as symlinks, laid out as installed."""
    import shutil
    if target.exists():
        shutil.rmtree(target)
    package_dirs = _package_dirs()
    root = target / "cmbrl"
    root.mkdir(parents=True)
    source = ROOT / package_dirs["cmbrl"]
    for entry in source.iterdir():
        if entry.name != "__pycache__":
            (root / entry.name).symlink_to(entry.resolve(), target_is_directory=entry.is_dir())
    for name, folder in package_dirs.items():
        if name != "cmbrl":
            link = target.joinpath(*name.split("."))
            if not link.exists():
                link.symlink_to((ROOT / folder).resolve(), target_is_directory=True)
    return target


mirror_installed_layout()


def _tables():
    spec = importlib.util.spec_from_file_location("cmbrl_docs_tables", ROOT / "benchmarks" / "tables.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def _insert_after(nav: list, after: str, entry: dict) -> bool:
    for i, item in enumerate(nav):
        value = next(iter(item.values())) if isinstance(item, dict) else item
        if value == after:
            nav.insert(i + 1, entry)
            return True
        if isinstance(value, list) and _insert_after(value, after, entry):
            return True
    return False


def on_config(config, **kwargs):
    docs = Path(config["docs_dir"])
    for page, title, after in OPTIONAL_PAGES:
        if (docs / page).exists() and config["nav"] is not None:
            listed = str(config["nav"])
            if f"'{page}'" not in listed and not _insert_after(config["nav"], after, {title: page}):
                config["nav"].append({title: page})
    return config


def on_pre_build(config, **kwargs):
    for line in _tables().stale():
        log.warning(f"generated table out of date: {line} (run: python benchmarks/tables.py)")


def on_files(files, config, **kwargs):
    for path in sorted(RESULTS.rglob("*")):
        if path.is_file():
            uri = "results/" + path.relative_to(RESULTS).as_posix()
            files.append(File.generated(config, uri, abs_src_path=str(path)))
    return files


SPHINX_ROLE = re.compile(r":(?:class|func|meth|attr|data|mod|obj|exc|const):<code>(~?)([^<]*)</code>")


def on_page_content(html, page, config, files):
    return SPHINX_ROLE.sub(lambda m: f"<code>{m.group(2).rsplit('.', 1)[-1] if m.group(1) else m.group(2)}</code>",
                           html)
