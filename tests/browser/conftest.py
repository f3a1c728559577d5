"""Browser tests of the built site: collected only when a built book is named.

    pytest tests/browser --site _build/html          (or ENERGYLIB_SITE=_build/html pytest tests/browser)

Without ``--site`` / ``ENERGYLIB_SITE`` the default run (``testpaths = tests book``) does not
collect this folder at all. With it, a missing or unbuilt site, a missing Chromium or a missing
playwright is a failure, never a skip: CI runs this after ``make book``.
"""

from __future__ import annotations

import os
from pathlib import Path

import pytest

ENV = "ENERGYLIB_SITE"
HERE = Path(__file__).resolve().parent


def pytest_addoption(parser: pytest.Parser) -> None:
    parser.addoption("--site", default=None, metavar="DIR",
                     help=f"a built book (e.g. _build/html) to test in headless Chromium; "
                          f"also ${ENV}")


def site_option(config: pytest.Config) -> str | None:
    return config.getoption("--site", default=None) or os.environ.get(ENV) or None


def pytest_ignore_collect(collection_path: Path, config: pytest.Config) -> bool | None:
    if site_option(config) is None and HERE in (collection_path, *collection_path.parents):
        return True
    return None


def _site(config: pytest.Config) -> Path:
    site = Path(site_option(config)).resolve()
    if not (site / "index.html").is_file():
        raise pytest.UsageError(f"--site {site}: no index.html there; build the book first "
                                f"(make book)")
    return site


def pages(site: Path) -> list[str]:
    """Every HTML page of the site, relative to it (Sphinx's own folders excluded)."""
    skip = {"_static", "_sources", "_images", "_downloads"}
    return sorted(str(p.relative_to(site)) for p in site.rglob("*.html")
                  if not skip.intersection(p.relative_to(site).parts))


def pytest_generate_tests(metafunc: pytest.Metafunc) -> None:
    if "page_path" in metafunc.fixturenames:
        found = pages(_site(metafunc.config))
        if not found:
            raise pytest.UsageError("the site has no HTML pages")
        metafunc.parametrize("page_path", found)


@pytest.fixture(scope="session")
def site(pytestconfig: pytest.Config) -> Path:
    return _site(pytestconfig)
