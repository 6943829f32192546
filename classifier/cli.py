"""What every command-line tool of this project (training and loadtests) shares: how its help states defaults."""

from __future__ import annotations

import argparse


class DefaultsHelp(argparse.ArgumentDefaultsHelpFormatter):
    """Each flag's help ends with its default, ``(default: 16)``, unless the help already says it in words (a default
    resolved at run time, ``(default: the service's)``), which would otherwise read ``(default: None)`` after it."""

    def _get_help_string(self, action: argparse.Action) -> str | None:
        if "(default:" in (action.help or ""):
            return action.help
        return super()._get_help_string(action)
