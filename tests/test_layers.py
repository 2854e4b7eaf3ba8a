"""The package keeps its layers: no import cycle, nothing imports upward, and serving never loads the Auth0 tooling."""

from __future__ import annotations

import ast
import subprocess
import sys
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
PACKAGE = REPO / "tiktok_proxy"

# Each module may import only modules of a lower rank (docs/architecture.md).
RANK = {
    "tiktok_proxy.config": 0,
    "tiktok_proxy.errors": 0,
    "tiktok_proxy.logs": 0,
    "tiktok_proxy.metrics": 0,
    "tiktok_proxy.oidc.sealing": 0,
    "tiktok_proxy.oidc.jose": 1,
    "tiktok_proxy.oidc.claims": 0,
    "tiktok_proxy.upstream": 1,
    "tiktok_proxy.listening": 1,
    "tiktok_proxy.inbound": 2,
    "tiktok_proxy.tiktok": 2,
    "tiktok_proxy.oidc.binding": 2,
    "tiktok_proxy.oidc.pages": 3,
    "tiktok_proxy.oidc.provider": 3,
    "tiktok_proxy.oidc.authorize": 4,
    "tiktok_proxy.oidc.token": 4,
    "tiktok_proxy.oidc.facade": 5,
    "tiktok_proxy.app": 6,
    "tiktok_proxy.serving": 3,
    "tiktok_proxy.shutdown": 0,
    "tiktok_proxy.auth0.management": 4,
    "tiktok_proxy.auth0.setup": 5,
    "tiktok_proxy.auth0.revoke_user": 5,
    "tiktok_proxy.auth0.doctor": 6,
    "tiktok_proxy.dev": 7,
    "tiktok_proxy.cli": 8,
}


def module_name(path: Path) -> str:
    parts = path.relative_to(REPO).with_suffix("").parts
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def package_imports(path: Path) -> set[str]:
    """The tiktok_proxy modules this file imports, anywhere in it (function-level imports included)."""
    name = module_name(path)
    package = name if path.name == "__init__.py" else name.rsplit(".", 1)[0]
    found = set()
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.Import):
            found |= {alias.name for alias in node.names}
        elif isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:
                anchor = package.split(".")[: len(package.split(".")) - node.level + 1]
                base = ".".join(anchor + ([node.module] if node.module else []))
            # `from . import tiktok` names a module; `from .config import Settings` names the module itself.
            found |= {f"{base}.{alias.name}" if f"{base}.{alias.name}" in RANK else base for alias in node.names}
    return {module for module in found if module in RANK}


def graph() -> dict[str, set[str]]:
    return {module_name(path): package_imports(path) for path in PACKAGE.rglob("*.py") if path.name != "__init__.py"}


def test_every_module_has_a_layer() -> None:
    assert set(graph()) == set(RANK), "add the new module to RANK, at its layer"


def test_imports_only_go_down() -> None:
    upward = [
        (module, imported)
        for module, imports in graph().items()
        for imported in imports
        if RANK[imported] >= RANK[module]
    ]
    assert upward == [], "a module imports one of its own layer or above it (a cycle waiting to happen)"


def test_the_checker_sees_imports() -> None:
    # Guards the test above: if this breaks, package_imports no longer understands the import statements.
    edges = graph()
    assert {"tiktok_proxy.tiktok", "tiktok_proxy.inbound", "tiktok_proxy.errors"} <= edges["tiktok_proxy.app"]
    assert "tiktok_proxy.auth0.doctor" in edges["tiktok_proxy.cli"]  # a function-level import


def test_serving_never_loads_the_auth0_tooling_nor_the_oidc_facade_when_it_is_off() -> None:
    code = "import proxy, sys; proxy.app; print(sorted(m.split('.')[0] if m.startswith('cryptography') else m for m in sys.modules if m.startswith(('tiktok_proxy', 'cryptography'))))"
    loaded = subprocess.run(
        [sys.executable, "-c", code], cwd=REPO, capture_output=True, text=True, check=True, env={"PATH": ""}
    )
    modules = eval(loaded.stdout)
    assert "tiktok_proxy.app" in modules
    assert not [module for module in modules if module.startswith("tiktok_proxy.auth0")]
    # Nor the facade and cryptography, with no OIDC_SIGNING_KEY_FILE: the token route never needs them.
    assert not [module for module in modules if module.startswith(("tiktok_proxy.oidc", "cryptography"))]
