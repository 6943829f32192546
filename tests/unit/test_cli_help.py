"""Every command-line tool's help states each flag's default once: as a value, or in words where it is resolved at
run time (``classifier.cli.DefaultsHelp``)."""

from __future__ import annotations

import json
import re
import subprocess
import sys

TOOLS = (
    "training.config",
    "training.benchmark",
    "loadtests.benchmark",
    "loadtests.engine_bench",
    "loadtests.explain_bench",
    "loadtests.gpu_bench",
    "loadtests.hotpath",
    "loadtests.overload",
    "loadtests.peak_memory",
    "loadtests.soak",
    "loadtests.sweep",
)
# In a process of its own: importing the load tools lets locust's gevent patch the standard library.
HELPS = """
import importlib, json, sys
helps = {}
for module in sys.argv[1:]:
    parser = importlib.import_module(module).build_parser()
    helps[module] = {
        action.option_strings[0]: parser._get_formatter()._expand_help(action)
        for action in parser._actions
        if action.option_strings and action.help is not None and action.dest != "help"
    }
print(json.dumps(helps))
"""


def test_each_flag_states_its_default_once():
    done = subprocess.run([sys.executable, "-c", HELPS, *TOOLS], capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr[-2000:]
    helps = json.loads(done.stdout.strip().splitlines()[-1])
    assert sorted(helps) == sorted(TOOLS)
    for module, flags in helps.items():
        for flag, text in flags.items():
            assert len(re.findall(r"\(default: ", text)) == 1, f"{module} {flag}: {text}"
            assert "(default: None)" not in text and "(default: )" not in text, f"{module} {flag}: {text}"
