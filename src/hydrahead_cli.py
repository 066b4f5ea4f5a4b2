"""The `hydrahead` command's entry point.

It lives outside the package so that importing it first tells `hydrahead/__init__.py` not to register the
model types with transformers at import (that imports torch: seconds on a busy machine). The command checks
its arguments first; loading a model registers them (`hydrahead.models.load_model`).
"""


def main(argv: list[str] | None = None) -> int:
    from hydrahead.cli import main as run

    return run(argv)
