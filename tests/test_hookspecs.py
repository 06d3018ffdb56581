"""Meta-tests: every hook spec is typed, documented in its docstring and in
docs/hooks.md, exercised by a test, and built-in "pick one" answers yield
to third-party plugins."""

from __future__ import annotations

import inspect
import re
from pathlib import Path

import pytest

from telemetry_core import hookimpl, hookspecs
from telemetry_core.catalog import hook_descriptions
from telemetry_core.plugins import DEFAULT_PLUGINS, load_plugins

TESTS = Path(__file__).parent
DOCS = TESTS.parent / "docs"
HOOKS = hook_descriptions()


def test_every_stage_has_hooks():
    stages = {hook.stage for hook in HOOKS}
    assert stages == {"lifecycle", "receive", "store", "convert", "dedup", "compress", "reduce"}
    assert all(hook.name.startswith(f"telemetry_{hook.stage}_") for hook in HOOKS if hook.stage != "lifecycle")


@pytest.mark.parametrize("hook", HOOKS, ids=lambda h: h.name)
def test_spec_is_typed_and_states_its_contract(hook):
    function = getattr(hookspecs, hook.name)
    signature = inspect.signature(function)
    assert signature.return_annotation is not inspect.Signature.empty, f"{hook.name} has no return type"
    doc = inspect.getdoc(function)
    for name, parameter in signature.parameters.items():
        assert parameter.annotation is not inspect.Parameter.empty, f"{hook.name}({name}) has no type"
        assert f":param {name}:" in doc, f"{hook.name} docstring does not describe {name}"
    if hook.firstresult:
        assert "First non-None result wins." in doc
    else:
        assert "All results are collected" in doc or "All implementations are called" in doc


def _test_sources() -> str:
    return "\n".join(path.read_text() for path in TESTS.glob("test_*.py"))


@pytest.mark.parametrize("hook", HOOKS, ids=lambda h: h.name)
def test_every_hook_has_a_test(hook):
    assert re.search(rf"def test_hook_{hook.name}\b", _test_sources()), \
        f"add a test named test_hook_{hook.name} that exercises the hook"


@pytest.mark.parametrize("hook", HOOKS, ids=lambda h: h.name)
def test_every_hook_is_documented(hook):
    text = (DOCS / "hooks.md").read_text()
    assert f"`{hook.signature}`" in text, f"docs/hooks.md must document `{hook.signature}`"


def test_docs_document_no_hook_that_does_not_exist():
    text = (DOCS / "hooks.md").read_text()
    documented = set(re.findall(r"`(telemetry_[a-z_]+)\(", text))
    assert documented == {hook.name for hook in HOOKS}


def test_builtin_pick_one_answers_are_fallbacks(pm):
    infos = load_plugins(pm, entry_points=False, builtins=DEFAULT_PLUGINS)
    firstresult = {hook.name for hook in HOOKS if hook.firstresult}
    checked = 0
    for info in infos:
        for caller in pm.get_hookcallers(info.plugin):
            if caller.name not in firstresult:
                continue
            for impl in caller.get_hookimpls():
                if impl.plugin is info.plugin:
                    assert impl.trylast, f"built-in {info.name}.{caller.name} must be trylast=True"
                    checked += 1
    assert checked >= 1


def test_hookimpl_is_importable_from_the_package():
    from telemetry_core import hookimpl as imported

    assert imported is hookimpl is hookspecs.hookimpl
    assert hookspecs.PROJECT_NAME == "telemetry"
