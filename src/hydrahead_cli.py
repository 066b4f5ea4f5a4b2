"""The `hydrahead` command's entry point.

It lives outside the package so that importing it first tells `hydrahead/__init__.py` not to register the
model types with transformers at import (which imports torch, seconds on a busy machine): the command
checks its arguments first and registers when it loads a model.
"""


def main() -> int:
    from hydrahead.cli import main as run

    return run()
