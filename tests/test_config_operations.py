"""The keys of fleet operations: [node] log_level, stop_grace, history, history_tasks; [autoscale]."""

from __future__ import annotations

import pytest

from xchanged.config import ConfigError, config_from_dict


def load(**sections):
    return config_from_dict({"node": {"name": "n"}, **sections}, check_files=False)


def test_defaults():
    c = load()
    assert (c.node.log_level, c.node.stop_grace, c.node.history, c.node.history_tasks) == ("info", 10.0, 604800.0, 0)
    assert c.autoscale.scale_up == "" and c.autoscale.hold == 60.0 and c.autoscale.min_nodes == 1


def test_values():
    c = load(node={"name": "n", "history": "7d", "history_tasks": 5000, "stop_grace": "0s", "log_level": "debug"},
             autoscale={"scale_up": "/usr/local/bin/grow --by 1", "utilization_down": 10, "cooldown": "15m"})
    assert c.node.history == 7 * 86400 and c.node.stop_grace == 0.0 and c.autoscale.cooldown == 900.0


@pytest.mark.parametrize("sections, key, fragment", [
    ({"node": {"name": "n", "log_level": "loud"}}, "node.log_level", "expected one of debug, info"),
    ({"node": {"name": "n", "history": "forever"}}, "node.history", "invalid duration"),
    ({"node": {"name": "n", "history_tasks": -1}}, "node.history_tasks", "at least 0"),
    ({"autoscale": {"scale_up": "grow 'unterminated"}}, "autoscale.scale_up", "not a command line"),
    ({"autoscale": {"utilization_down": 90}}, "autoscale.utilization_down", "less than autoscale.utilization_up"),
    ({"autoscale": {"hold": "0s"}}, "autoscale.hold", "greater than zero"),
])
def test_bad_values_name_the_key(sections, key, fragment):
    with pytest.raises(ConfigError) as info:
        load(**sections)
    assert info.value.key == key and fragment in info.value.reason
