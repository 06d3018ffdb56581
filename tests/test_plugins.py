"""Plugin loading: entry points, built-ins, YAML selection, order, overrides, broken plugins."""

from __future__ import annotations

import io
import itertools
import sys
from pathlib import Path

import pytest

from telemetry_core import hookimpl
from telemetry_core.compress.codecs_builtin import XzCodec
from telemetry_core.engine import Engine
from telemetry_core.errors import PluginLoadError
from telemetry_core.metrics.stats import snapshot
from telemetry_core.plugins import DEFAULT_PLUGINS, load_plugins

from plugin_dists import make_dist

_counter = itertools.count()


@pytest.fixture
def site(tmp_path, monkeypatch):
    """A directory on sys.path for fake-installed distributions; their modules are forgotten afterwards."""
    directory = tmp_path / "site"
    directory.mkdir()
    monkeypatch.syspath_prepend(str(directory))
    before = set(sys.modules)
    yield directory
    for name in set(sys.modules) - before:
        if name.startswith("tp_"):
            del sys.modules[name]


def unique(prefix="tp_mod"):
    return f"{prefix}_{next(_counter)}"


CODEC_PLUGIN = """
    import io
    from telemetry_core import hookimpl

    class LoudXz:
        name = suffix = "xz"
        def compress(self, source, target, level):
            target.write(b"LOUD" + source.read())
        def open_reader(self, source):
            return io.BytesIO(source.read()[4:])

    @hookimpl
    def telemetry_compress_codec(name):
        return LoudXz() if name == "xz" else None
"""


def test_entry_point_plugin_loads_without_yaml_and_is_listed(pm, site):
    module = unique()
    make_dist(site, "telemetry-loud", module, CODEC_PLUGIN, {"loud": f"{module}"}, version="2.5")
    infos = {i.name: i for i in load_plugins(pm)}
    assert infos["loud"].source == "entrypoint"
    assert (infos["loud"].distribution, infos["loud"].version) == ("telemetry-loud", "2.5")
    assert infos["loud"].hooks == ["telemetry_compress_codec"]
    assert {name for name, _ in DEFAULT_PLUGINS} <= set(infos)


def test_third_party_pick_one_answer_wins_over_the_builtin(pm, site, make_engine):
    module = unique()
    make_dist(site, "telemetry-loud", module, CODEC_PLUGIN, {"loud": module})
    load_plugins(pm)
    codec = make_engine().codec(name="xz")
    packed = io.BytesIO()
    codec.compress(io.BytesIO(b"data"), packed, 0)
    assert packed.getvalue() == b"LOUDdata"
    assert isinstance(make_engine().codec(name="gzip"), object)  # other names still answered by the built-in


def test_disabling_the_third_party_plugin_restores_the_builtin(pm, site, make_engine):
    module = unique()
    make_dist(site, "telemetry-loud", module, CODEC_PLUGIN, {"loud": module})
    infos = {i.name: i for i in load_plugins(pm, disabled=["loud"])}
    assert infos["loud"].status == "disabled"
    assert module not in sys.modules  # never imported
    assert isinstance(make_engine().codec(name="xz"), XzCodec)


def test_disabling_a_builtin(pm, make_engine):
    infos = {i.name: i for i in load_plugins(pm, disabled=["compress.codecs"], entry_points=False)}
    assert infos["compress.codecs"].status == "disabled"
    with pytest.raises(Exception, match="no installed plugin provides codec 'xz'"):
        make_engine().codec(name="xz")


def test_plugin_without_hooks_is_still_listed(pm, site):
    module = unique()
    make_dist(site, "telemetry-quiet", module, "VALUE = 1\n", {"quiet": module})
    infos = {i.name: i for i in load_plugins(pm)}
    assert infos["quiet"].status == "loaded" and infos["quiet"].hooks == []


def test_import_error_names_plugin_and_distribution(pm, site):
    module = unique()
    make_dist(site, "telemetry-broken", module, "import does_not_exist_anywhere\n", {"broken": module}, "0.3")
    with pytest.raises(PluginLoadError) as caught:
        load_plugins(pm)
    message = str(caught.value)
    assert message == ("plugin 'broken' (distribution telemetry-broken 0.3) failed to load: "
                       "ModuleNotFoundError: No module named 'does_not_exist_anywhere'")
    assert "\n" not in message


def test_skip_broken_logs_counts_and_lists(pm, site, caplog):
    module = unique()
    make_dist(site, "telemetry-broken", module, "raise RuntimeError('boom\\nsecond line')\n", {"broken": module})
    infos = {i.name: i for i in load_plugins(pm, skip_broken=True)}
    assert infos["broken"].status == "broken"
    assert "RuntimeError: boom second line" in infos["broken"].error
    assert "skipped because plugins.skip_broken is true" in caplog.text
    assert snapshot()["plugins_loading"]["broken"] == 1
    assert infos["compress.codecs"].status == "loaded"


def test_wrong_hook_arguments_are_a_broken_plugin(pm, site):
    module = unique()
    source = """
        from telemetry_core import hookimpl
        @hookimpl
        def telemetry_compress_codec(name, level):
            return None
    """
    make_dist(site, "telemetry-badargs", module, source, {"badargs": module})
    with pytest.raises(PluginLoadError, match=r"plugin 'badargs' \(distribution telemetry-badargs 1.0\).*level"):
        load_plugins(pm)


def test_unknown_hook_is_a_broken_plugin(pm, site):
    module = unique()
    source = """
        from telemetry_core import hookimpl
        @hookimpl
        def telemetry_compress_codex(name):
            return None
    """
    make_dist(site, "telemetry-typo", module, source, {"typo": module})
    with pytest.raises(PluginLoadError, match="plugin 'typo'.*unknown hook 'telemetry_compress_codex'"):
        load_plugins(pm)


def test_unknown_hook_skipped_when_skip_broken(pm, site):
    module = unique()
    source = """
        from telemetry_core import hookimpl
        @hookimpl
        def telemetry_compress_codex(name):
            return None
    """
    make_dist(site, "telemetry-typo", module, source, {"typo": module})
    infos = {i.name: i for i in load_plugins(pm, skip_broken=True)}
    assert infos["typo"].status == "broken"
    assert pm.get_plugin("typo") is None


def test_name_clash_with_a_builtin_is_reported(pm, site):
    module = unique()
    make_dist(site, "telemetry-impostor", module, "X = 1\n", {"compress.codecs": module})
    with pytest.raises(PluginLoadError, match="plugin 'compress.codecs' \\(distribution telemetry-impostor "
                                              "1.0\\) failed to load: the name is taken by a built-in plugin"):
        load_plugins(pm)


def test_two_plugins_with_one_name(pm, site):
    first, second = unique(), unique()
    make_dist(site, "telemetry-one", first, "X = 1\n", {"same": first})
    make_dist(site, "telemetry-two", second, "X = 2\n", {"same": second})
    with pytest.raises(PluginLoadError, match="another plugin is already registered under the name 'same'"):
        load_plugins(pm)


class Order:
    def __init__(self, name):
        self.name = name

    @hookimpl
    def telemetry_services(self, engine):
        return [self.name]


def test_load_order_entry_points_then_builtins_then_yaml(pm, site, make_engine):
    ep_module, builtin_module, yaml_module = unique(), unique(), unique()
    make_dist(site, "telemetry-ep", ep_module, "from test_plugins import Order\nplugin = Order('entrypoint')\n",
              {"ep": f"{ep_module}:plugin"})
    for module, name in ((builtin_module, "builtin"), (yaml_module, "yaml")):
        (site / f"{module}.py").write_text(f"from test_plugins import Order\n"
                                           f"telemetry_services = Order({name!r}).telemetry_services\n")
    infos = load_plugins(pm, load=[yaml_module], builtins=(builtin_module,))
    ours = {"ep", builtin_module, yaml_module}
    assert [(i.name, i.source) for i in infos if i.name in ours] == [
        ("ep", "entrypoint"), (builtin_module, "builtin"), (yaml_module, "config")]
    # pluggy calls the most recently registered plugin first
    assert make_engine().services() == ["yaml", "builtin", "entrypoint"]


def test_yaml_loads_plugins_from_files_and_modules(pm, tmp_path):
    plugin_file = tmp_path / "local_plugin.py"
    plugin_file.write_text("from telemetry_core import hookimpl\n"
                           "@hookimpl\ndef telemetry_services(engine):\n    return ['from-file']\n")
    infos = {i.name: i for i in load_plugins(pm, load=[str(plugin_file)], entry_points=False, builtins=())}
    assert infos["local_plugin"].source == "config"
    assert infos["local_plugin"].hooks == ["telemetry_services"]
    with pytest.raises(PluginLoadError, match="plugin 'gone' failed to load: FileNotFoundError"):
        load_plugins(pm, load=[str(tmp_path / "gone.py")], entry_points=False, builtins=())


def test_engine_from_yaml_selects_and_disables(site, tmp_path):
    module = unique()
    make_dist(site, "telemetry-loud", module, CODEC_PLUGIN, {"loud": module})
    config = tmp_path / "plugins.yaml"
    config.write_text(f"data_dir: {tmp_path / 'data'}\nplugins:\n  disabled: [loud]\n")
    engine = Engine.from_config(config, configure_logs=False)
    assert {p.name: p.status for p in engine.plugins}["loud"] == "disabled"
    assert isinstance(engine.codec(name="xz"), XzCodec)
    enabled = Engine.from_config(config, ["plugins.disabled=[]"], configure_logs=False)
    assert not isinstance(enabled.codec(name="xz"), XzCodec)


def test_per_plugin_hook_metrics_cover_entry_point_plugins(pm, site, make_engine):
    module = unique()
    make_dist(site, "telemetry-loud", module, CODEC_PLUGIN, {"loud": module})
    load_plugins(pm)
    make_engine().codec(name="xz")
    assert snapshot()["plugins"]["loud"]["telemetry_compress_codec"]["calls"] == 1
