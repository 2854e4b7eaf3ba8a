"""The documentation stays true: every variable the code reads is documented, .env.example loads, the README stays
a short front page whose links land, and the site under docs/ builds strictly and needs no network."""

from __future__ import annotations

import functools
import hashlib
import json
import os
import re
import subprocess
import sys
import threading
import tomllib
from collections.abc import Iterator
from http.server import SimpleHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

import pytest
from dotenv import dotenv_values

from tiktok_proxy.auth0.management import load_admin_settings
from tiktok_proxy.config import VARIABLES, ConfigError, Settings, load_settings

REPO = Path(__file__).resolve().parent.parent
CONFIGURATION_PAGE = REPO / "docs" / "configuration.md"
README_MAX_LINES = 300
# The Apache License 2.0 as the Apache Software Foundation publishes it (apache.org/licenses/LICENSE-2.0.txt, and
# Debian's /usr/share/common-licenses/Apache-2.0), byte for byte.
APACHE_2_SHA256 = "cfc7749b96f63bd31c3c42b5c471bf756814053e847c10f3eb003417bc523d30"


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


def test_one_tiktok_app_is_gated_by_its_key_and_secret_everywhere() -> None:
    """The quick starts and the container examples start the proxy the recommended way; PROXY_SECRET is for
    several apps behind one proxy (docs/gate-modes.md), never a step of the single-app setup."""
    examples = []
    for page in ("README.md", "docs/auth0.md"):
        step = re.search(r"\*\*2\. Fill in `\.env`\.\*\*(.*?)\*\*3\. ", (REPO / page).read_text(), re.DOTALL)
        assert step, f"{page} has no step 2"
        # The one sentence that points the other way, for several apps, is not a step of this setup.
        several = re.compile(r"For several TikTok apps behind one proxy, set `PROXY_SECRET` and\s+list their keys in "
                             r"`ALLOWED_CLIENT_KEYS` \(\[Gate modes\]\([^)]+\)\)\.")  # fmt: skip
        assert several.search(step.group(1)), f"{page}: step 2 no longer says what several apps use"
        examples.append((page, several.sub("", step.group(1))))
    for page in ("Dockerfile", "docs/operations/deploy.md"):
        runs = re.findall(r"docker run -p (?:.*\\\n)*.*", (REPO / page).read_text())  # with its continued lines
        assert runs, f"{page} shows no docker run"
        examples += [(page, run) for run in runs]
    for page, example in examples:
        assert "TIKTOK_CLIENT_KEY" in example and "TIKTOK_CLIENT_SECRET" in example, f"{page}: {example}"
        assert "PROXY_SECRET" not in example and "ALLOWED_CLIENT_KEYS" not in example, f"{page}: {example}"


def test_the_docs_quote_the_refusal_without_a_gate_as_the_proxy_prints_it() -> None:
    with pytest.raises(ConfigError) as refused:
        load_settings({"HOST": "0.0.0.0"})
    line = f"tiktok-token-proxy: configuration error: {refused.value}"
    assert line in (REPO / "docs" / "gate-modes.md").read_text()


def test_every_node_version_named_is_the_one_the_js_tests_require() -> None:
    engines = json.loads((REPO / "tests" / "js" / "package.json").read_text())["engines"]["node"]
    required = re.fullmatch(r">=(\d+)", engines)
    assert required, f"tests/js/package.json's engines.node is {engines!r}, not >=N"
    named = []
    pages = [REPO / "README.md", *(REPO / "docs").rglob("*.md"), *(REPO / "scripts").iterdir(), REPO / ".ci/run"]
    for path in pages:
        for version in re.findall(r"\bNode(?:\.js)? (\d+)\b", path.read_text()):
            named.append((str(path.relative_to(REPO)), version))
    assert {"README.md", "docs/index.md", "docs/oidc.md"} <= {page for page, _ in named}  # guards the pattern
    for page, version in named:
        assert version == required[1], f"{page} names Node.js {version}; tests/js/package.json requires {engines}"


def repository_text_files() -> dict[Path, str]:
    """Every text file of the repository; not what tools make beside it (.git, .venv, caches, installed packages,
    the built site), nor a .env, nor the code vendored into the site (docs/assets/vendor/)."""
    files = {}
    for path in REPO.rglob("*"):
        *folders, name = path.relative_to(REPO).parts
        made_by_tools = (
            folders[:1] == ["site"]
            or folders[:3] == ["docs", "assets", "vendor"]
            or any(
                folder in ("node_modules", "__pycache__") or (folder.startswith(".") and folder != ".ci")
                for folder in folders
            )
        )
        if made_by_tools or name == ".env" or not path.is_file() or path.suffix == ".png":
            continue
        files[path] = path.read_text(errors="replace")
    return files


def test_nothing_cites_a_file_outside_the_repository() -> None:
    """Code, tests and docs cite only what a reader of the repository can open: every Markdown file they name is
    one of the repository's, and no relative path climbs out of it."""
    files = repository_text_files()
    assert REPO / "tiktok_proxy" / "tiktok.py" in files and REPO / ".ci" / "run" in files  # guards the walk
    markdown = {path.name for path in files if path.suffix == ".md"}
    for path, text in files.items():
        where = path.relative_to(REPO)
        for name in re.findall(r"[\w.-]+\.md\b", text):
            assert name in markdown, f"{where} cites {name}, which is not in the repository"
        for climb in re.findall(r"(?<![\w.])(?:\.\./)+[\w./-]*", text):
            target = (path.parent / climb).resolve()
            assert target.is_relative_to(REPO) and target.exists(), f"{where} cites {climb}, outside the repository"


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


def test_the_project_is_licensed_under_apache_2() -> None:
    license_text = (REPO / "LICENSE").read_bytes()
    assert hashlib.sha256(license_text).hexdigest() == APACHE_2_SHA256, "LICENSE must be the Apache-2.0 text, unchanged"
    project = tomllib.loads((REPO / "pyproject.toml").read_text())["project"]
    assert project["license"] == "Apache-2.0" and project["license-files"] == ["LICENSE"]
    for page in ("README.md", "docs/index.md"):
        text = (REPO / page).read_text()
        assert "Apache License 2.0" in text and "`LICENSE`" in text, f"{page} does not say the licence"


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
            # mkdocs renders docs/operations/deploy.md as operations/deploy/index.html, and docs/index.md as index.html.
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
    # One paragraph may name the figures, to say that TikTok's pages disagree and that none of them is used.
    quirks = (REPO / "docs" / "tiktok-quirks.md").read_text()
    disagreement = quirks.split("### Token lifetimes: no fixed number", 1)[1].split("\n\n", 2)[1]
    assert "have not agreed" in disagreement and "Nothing in the proxy assumes a lifetime" in disagreement
    allowed = {line.strip() for line in disagreement.splitlines()}
    assert [line for line in stated if line.split(": ", 1)[1] not in allowed] == []


# ------------------------------------------------------------------------------ the site in a browser

MERMAID = REPO / "docs" / "assets" / "vendor" / "mermaid-11.17.2" / "mermaid.min.js"
# npm pack mermaid@11.17.2, package/dist/mermaid.min.js (mkdocs.yml says how to refresh it).
MERMAID_SHA256 = "581ed7d74bd9048d0e3a91363927d72ef22942d7722546b27f7cc29e35390eb8"


class QuietFiles(SimpleHTTPRequestHandler):
    def log_message(self, format: str, *args: Any) -> None:
        pass


@pytest.fixture(scope="module")
def served_site(site: Path) -> Iterator[str]:
    """The built site over http on loopback, as `mkdocs serve` would show it."""
    server = ThreadingHTTPServer(("127.0.0.1", 0), functools.partial(QuietFiles, directory=str(site)))
    threading.Thread(target=server.serve_forever, daemon=True).start()
    yield f"http://127.0.0.1:{server.server_address[1]}/"
    server.shutdown()
    server.server_close()


# Material draws each diagram into a closed shadow root; opened, the test can read what was drawn.
OPEN_SHADOW_ROOTS = """
const attach = Element.prototype.attachShadow;
Element.prototype.attachShadow = function (options) { return attach.call(this, {...options, mode: "open"}); };
"""


def open_page(browser: Any, url: str, width: int = 1280) -> tuple[Any, list[str]]:
    """The page, and every URL it asked for."""
    page = browser.new_context(viewport={"width": width, "height": 900}).new_page()
    page.add_init_script(OPEN_SHADOW_ROOTS)
    requested: list[str] = []
    page.on("request", lambda request: requested.append(request.url))
    page.goto(url, wait_until="networkidle")
    return page, requested


def test_the_vendored_mermaid_is_the_pinned_one() -> None:
    assert hashlib.sha256(MERMAID.read_bytes()).hexdigest() == MERMAID_SHA256
    assert "assets/vendor/mermaid-11.17.2/mermaid.min.js" in (REPO / "mkdocs.yml").read_text()
    assert "MIT" in (MERMAID.parent / "LICENSE").read_text()


@pytest.mark.parametrize(
    ("page", "actors"),
    [("auth0/", ["Browser", "Auth0", "This proxy", "TikTok"]), ("oidc/", ["Relying party", "The proxy", "TikTok"])],
)
def test_the_sign_in_diagrams_render_offline(browser: Any, served_site: str, page: str, actors: list[str]) -> None:
    # Material would fetch mermaid from unpkg.com if the site did not carry it; chromium here reaches nothing else.
    tab, requested = open_page(browser, served_site + page)
    diagram = tab.locator(".mermaid svg").first
    diagram.wait_for(state="visible", timeout=15_000)
    text = diagram.text_content() or ""
    for actor in actors:
        assert actor in text
    assert "Syntax error" not in text and tab.locator("pre.mermaid").count() == 0  # every diagram drawn
    assert all(url.startswith(served_site) for url in requested), [
        u for u in requested if not u.startswith(served_site)
    ]
    tab.context.close()


@pytest.mark.parametrize("width", [1280, 800])
def test_names_in_tables_never_break_mid_word(browser: Any, served_site: str, width: int) -> None:
    tab, _ = open_page(browser, served_site + "configuration/", width)
    # Each name in a table is on one line (a code element that wraps has more than one box).
    names = tab.eval_on_selector_all(
        "table code",
        "codes => codes.filter(c => !/[\\s-]/.test(c.innerText)).map(c => [c.innerText, c.getClientRects().length])",
    )
    assert any(name == "TIKTOK_AUTHORIZE_URL" for name, _ in names)  # guards the selector
    assert [name for name, boxes in names if boxes > 1] == []
    tab.context.close()


def test_a_long_comment_in_a_code_block_wraps_instead_of_scrolling(browser: Any, served_site: str) -> None:
    tab, _ = open_page(browser, served_site + "auth0/", 800)
    block = tab.locator("pre > code", has_text="# deletion-queue.txt: one Auth0 user id a line")
    assert block.evaluate("code => code.scrollWidth <= code.clientWidth")
    tab.context.close()
