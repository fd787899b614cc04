"""Every hook specification is documented in docs/plugins.md with its exact signature."""

from __future__ import annotations

import inspect
import re
from pathlib import Path

from multinic_core import hookspecs
from multinic_core.plugins import PluginRegistry

DOCS = Path(__file__).resolve().parents[3] / "docs" / "plugins.md"


def hook_specs() -> dict[str, inspect.Signature]:
    return {
        name: inspect.signature(func)
        for name, func in vars(hookspecs).items()
        if name.startswith("multinic_") and callable(func)
    }


def documented_signature(name: str, signature: inspect.Signature) -> str:
    params = ", ".join(signature.parameters)
    return f"#### `{name}({params}) -> {signature.return_annotation}`"


def test_every_hook_is_documented_with_its_exact_signature() -> None:
    text = DOCS.read_text()
    specs = hook_specs()
    assert len(specs) >= 5
    for name, signature in specs.items():
        assert documented_signature(name, signature) in text, f"{name} not documented as spec'd"


def test_docs_name_no_hook_that_does_not_exist() -> None:
    documented = set(re.findall(r"^#### `(multinic_\w+)\(", DOCS.read_text(), re.MULTILINE))
    assert documented == set(hook_specs())


def test_every_hook_has_a_docstring_saying_when_it_is_called() -> None:
    for name in hook_specs():
        doc = inspect.getdoc(getattr(hookspecs, name)) or ""
        assert "Called" in doc, f"{name} does not say when it is called"
        assert ":returns:" in doc, f"{name} does not say what it returns"


def test_required_hooks_exist_in_specs() -> None:
    specs = hook_specs()
    for hooks in hookspecs.REQUIRED_HOOKS.values():
        assert set(hooks) <= set(specs)


def test_the_plugin_table_lists_exactly_the_installed_plugins() -> None:
    """docs/plugins.md's table and `multinic plugins` name the same (kind, name, package)."""
    kinds = {"main plugin": "multinic.main_plugins", "attach policy": "multinic.policies",
             "IPAM plugin": "multinic.ipam"}  # fmt: skip
    rows = re.findall(
        r"^\| (main plugin|attach policy|IPAM plugin) \| `([^`]+)` \| (\S+)", DOCS.read_text(), re.M
    )
    documented = {(kinds[kind], name, package) for kind, name, package in rows}
    installed = {(i.group, i.name, i.distribution) for i in PluginRegistry().discover()}
    assert documented == installed
