"""The documentation stays true: every variable the code reads is documented, and .env.example loads."""

from __future__ import annotations

import re
from pathlib import Path

from dotenv import dotenv_values

from tiktok_proxy.auth0.management import load_admin_settings
from tiktok_proxy.config import Settings, load_settings

REPO = Path(__file__).resolve().parent.parent


def variables_read_by_the_code() -> set[str]:
    names = set()
    for source in (REPO / "tiktok_proxy").rglob("*.py"):
        names |= set(re.findall(r'\b(?:raw|get)\("([A-Z][A-Z0-9_]+)"', source.read_text()))
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


def test_every_variable_is_in_env_example_and_the_readme() -> None:
    example = dotenv_values(REPO / ".env.example")
    readme = (REPO / "README.md").read_text()
    for name in variables_read_by_the_code():
        assert name in example, f"{name} is missing from .env.example"
        assert f"`{name}`" in readme, f"{name} is missing from the README's configuration tables"


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
    assert "pip install -r requirements.txt" in commands.group(1) and "proxy.py" in commands.group(1)
    assert "scripts/test" in commands.group(2)
    assert ".venv/bin/python -m pytest" in (REPO / "scripts" / "test").read_text()
    assert "# install what the tests need and run them" in (REPO / ".ci" / "run").read_text()
