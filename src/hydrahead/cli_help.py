"""The command line's conventions: one spelling per flag with the other accepted, help that shows every
default, and `--version`. Torch-free: `hydrahead --help` and `--version` answer at once."""

from __future__ import annotations

import argparse
import sys


def flag(name: str, *aliases: str) -> tuple[str, ...]:
    """`--name` spelled the lm-evaluation-harness way (underscores, `--output_path`), then the dash
    spelling (`--output-path`) as an alias, then any other `aliases` (`--behaviors`)."""
    canonical = "--" + name.replace("-", "_")
    dashed = "--" + name.replace("_", "-")
    return (canonical, *([dashed] if dashed != canonical else []), *aliases)


class HelpFormatter(argparse.ArgumentDefaultsHelpFormatter):
    """Appends "(default: X)" to a flag's help. A default of None or False means "not given" and is left
    out; a help text that already explains its default ("default 50 unless ...") is kept as it is."""

    def _get_help_string(self, action):
        text = action.help or ""
        unset = action.default is None or action.default is False or action.default == argparse.SUPPRESS
        if not action.option_strings or unset or "default" in text:  # `is`: a default of 0 is shown
            return text
        return text + " (default: %(default)s)"


class Parser(argparse.ArgumentParser):
    """Every parser and sub-parser of `hydrahead` (add_subparsers makes them of this class too)."""

    def __init__(self, *args, **kwargs):
        kwargs.setdefault("formatter_class", HelpFormatter)
        super().__init__(*args, **kwargs)


def command(sub, name: str, help: str) -> Parser:
    """A sub-command whose own `--help` opens with what it does (argparse shows `help` only in the list)."""
    return sub.add_parser(name, help=help, description=help)


class VersionAction(argparse.Action):
    """`--version`: one line, e.g. `hydrahead 0.1.0 (torch 2.13.0+cpu, transformers 5.24.0, python 3.11.2)`."""

    def __init__(self, option_strings, dest=argparse.SUPPRESS, default=argparse.SUPPRESS, help=None):
        super().__init__(option_strings, dest=dest, default=default, nargs=0,
                         help=help or "print the versions of hydrahead, torch, transformers and python, and exit")

    def __call__(self, parser, namespace, values, option_string=None):
        from .versions import software_versions

        v = software_versions()
        print(f"hydrahead {v['hydrahead']} (torch {v['torch']}, transformers {v['transformers']}, python {v['python']})")
        sys.stdout.flush()
        parser.exit()
