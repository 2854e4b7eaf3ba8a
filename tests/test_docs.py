"""The documentation stays true: every variable the code reads is documented, .env.example loads, the README stays
a short front page whose links land, and the site under docs/ builds strictly and needs no network."""

from __future__ import annotations

import os
import re
import subprocess
import sys
from pathlib import Path

import pytest
from dotenv import dotenv_values

from tiktok_proxy.auth0.management import load_admin_settings
from tiktok_proxy.config import VARIABLES, Settings, load_settings

REPO = Path(__file__).resolve().parent.parent
CONFIGURATION_PAGE = REPO / "docs" / "configuration.md"
README_MAX_LINES = 300


def variables_read_by_the_code() -> set[str]:
    names = set()
    for source in (REPO / "tiktok_proxy").rglob("*.py"):
        names |= set(re.findall(r'\b(?:raw|get)\("([A-Z][A-Z0-9_]+)"', source.read_text()))
    return names


def variables_in_the_configuration_tables() -> set[str]:
    """The names in the first column of the configuration page's tables (a cell may name two: `A`, `B`)."""
    names = set()
    for row in re.findall(r"^\| (`[A-Z][^|]*?) \|", CONFIGURATION_PAGE.read_text(), re.MULTILINE):
        names |= set(re.findall(r"`([A-Z][A-Z0-9_]+)`", row))
    return names


def test_the_code_reads_the_variables_we_expect() -> None:
    # Guards the scan below: if this breaks, the regex no longer sees how the code reads variables.
    assert {
        "PORT",
        "TIKTOK_TOKEN_URL",
        "ALLOWED_CLIENT_KEYS",
        "AUTH0_DOMAIN",
        "PUBLIC_URL",
    } <= variables_read_by_the_code()


def test_the_configuration_tables_are_read_as_we_expect() -> None:
    # Guards the check below: both tables, and a cell naming two variables, are seen; prose is not.
    documented = variables_in_the_configuration_tables()
    assert {"HOST", "PROXY_SECRET", "HTTPS_PROXY", "NO_PROXY", "AUTH0_DOMAIN", "TIKTOK_CLIENT_SECRET"} <= documented
    assert "PROMETHEUS_MULTIPROC_DIR" not in documented  # set by the proxy, not by you; named only in prose


def test_every_variable_the_code_reads_is_registered() -> None:
    # config.VARIABLES tells a setting from a misspelling: a variable read but not listed would be warned about.
    for name in variables_read_by_the_code():
        assert name in VARIABLES, f"{name} is read by the code but missing from config.VARIABLES"


def test_env_example_and_the_configuration_page_list_exactly_the_registered_variables() -> None:
    example = set(dotenv_values(REPO / ".env.example"))
    assert not VARIABLES - example, f"missing from .env.example: {sorted(VARIABLES - example)}"
    assert not example - VARIABLES, f"in .env.example but not in config.VARIABLES: {sorted(example - VARIABLES)}"
    documented = variables_in_the_configuration_tables()
    assert not VARIABLES - documented, f"missing from docs/configuration.md's tables: {sorted(VARIABLES - documented)}"
    assert not documented - VARIABLES, (
        f"in docs/configuration.md but not in config.VARIABLES: {sorted(documented - VARIABLES)}"
    )


def test_env_example_loads_as_it_is() -> None:
    values = {k: v or "" for k, v in dotenv_values(REPO / ".env.example").items()}
    assert load_settings(values) == Settings()
    admin = load_admin_settings(environ=values)
    assert admin.connection_name == "tiktok" and admin.scopes == "user.info.basic"


def test_ci_runs_the_readmes_test_command() -> None:
    readme = (REPO / "README.md").read_text()
    commands = re.search(
        r"```sh\n# install the proxy and start it\n(.+)\n# install what the tests need and run them\n(.+)\n```", readme
    )
    assert commands, "README.md must open with the two commands"
    assert readme.index(commands.group(0)) < readme.index("\n## "), "the two commands come before any section"
    assert "pip install -r requirements.txt" in commands.group(1) and "proxy.py" in commands.group(1)
    assert "scripts/test" in commands.group(2)
    test_script = (REPO / "scripts" / "test").read_text()
    assert ".venv/bin/python -m pytest" in test_script
    assert ".venv/bin/mkdocs build --strict" in test_script
    assert "# install what the tests need and run them" in (REPO / ".ci" / "run").read_text()


def test_the_readme_stays_a_front_page() -> None:
    lines = (REPO / "README.md").read_text().splitlines()
    assert len(lines) <= README_MAX_LINES, f"README.md has {len(lines)} lines: move reference material into docs/"


@pytest.fixture(scope="module")
def site(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The site, built the way scripts/test builds it: strict, so any broken link, anchor or page fails it."""
    out = tmp_path_factory.mktemp("site")
    built = subprocess.run(
        [sys.executable, "-m", "mkdocs", "build", "--strict", "--site-dir", str(out)],
        cwd=REPO,
        capture_output=True,
        text=True,
        env={**os.environ, "NO_MKDOCS_2_WARNING": "1"},  # without Material's banner about MkDocs 2.0
        timeout=120,
    )
    assert built.returncode == 0, built.stderr
    return out


def test_the_site_needs_no_network(site: Path) -> None:
    pages = list(site.rglob("*.html"))
    assert len(pages) > 15
    for page in pages:
        html = page.read_text()
        assert "fonts.googleapis" not in html and "fonts.gstatic" not in html, f"{page} loads Google Fonts"
        # Scripts, stylesheets and icons come from the site itself; only links a reader follows may leave it.
        fetched = re.findall(r"<script\b[^>]*>|<link\b(?![^>]*\brel=\"(?:canonical|alternate)\")[^>]*>", html)
        external = [tag for tag in fetched if re.search(r'\b(?:src|href)="(?:https?:)?//', tag)]
        assert not external, f"{page} fetches {external}"


def test_the_readmes_links_land(site: Path) -> None:
    readme = (REPO / "README.md").read_text()
    links = re.findall(r"\]\(((?!https?://)[^)#]+)(?:#([^)]+))?\)", readme)
    assert len(links) > 10  # guards the pattern
    for target, anchor in links:
        assert (REPO / target).exists(), f"README.md links to {target}, which does not exist"
        if anchor:
            # mkdocs renders docs/x/y.md as x/y/index.html, and docs/index.md as index.html.
            page = site / Path(target).relative_to("docs").with_suffix("") / "index.html"
            page = site / "index.html" if target == "docs/index.md" else page
            assert f'id="{anchor}"' in page.read_text(), f"README.md: {target} has no heading #{anchor}"


# TikTok's pages have said 24 hours and 365 days, then 2 hours and 180 days: none of them is a fact to build on.
TIKTOK_LIFETIMES = re.compile(r"\b(24 hours|2 hours|365 days|180 days|86400|31536000|7200|15552000)\b")


def test_no_page_states_a_tiktok_token_lifetime() -> None:
    """The proxy passes expires_in and refresh_expires_in as TikTok answers them; the docs and the code's comments
    say so, and never give a figure of their own."""
    sources = [REPO / "README.md", REPO / ".env.example", *(REPO / "docs").rglob("*.md")]
    sources += (REPO / "tiktok_proxy").rglob("*.py")
    stated = [
        f"{path.relative_to(REPO)}:{number}: {line.strip()}"
        for path in sources
        for number, line in enumerate(path.read_text().splitlines(), 1)
        if TIKTOK_LIFETIMES.search(line)
    ]
    assert stated == []
