"""Third-party output a command-line user can do nothing about, silenced while a `hydrahead` command runs.

- Deprecation warnings: transformers 5.24 warns twice per run that `past_key_values` is deprecated (as a
  FutureWarning and as a log record); it is the keyword every release hydrahead supports accepts, so
  the warning only buries hydrahead's own output.
- transformers' "Loading weights" / "Writing model shards" bars on every load and save.

hydrahead's own progress bars (plain tqdm; `--quiet` turns them off) and transformers' other log
records are kept. Only the command line does this: the library leaves warnings to its caller.
"""

from __future__ import annotations

import contextlib
import logging
import warnings


class _DropDeprecations(logging.Filter):
    def filter(self, record: logging.LogRecord) -> bool:
        return "deprecat" not in record.getMessage().lower()


@contextlib.contextmanager
def third_party_quiet():
    """Silence deprecation warnings and transformers' progress bars; restore both afterwards."""
    with warnings.catch_warnings():
        for category in (DeprecationWarning, FutureWarning):
            warnings.filterwarnings("ignore", category=category)
        warnings.filterwarnings("ignore", message=".*deprecat")  # e.g. a UserWarning that says so (case-insensitive)
        restore = _quiet_transformers()
        try:
            yield
        finally:
            restore()


def run_quietly(main) -> None:
    """A script's main under third_party_quiet: benchmarks/ run for hours, and their logs were thousands of load
    bars deep."""
    with third_party_quiet():
        main()


def _quiet_transformers():
    """Drop transformers' deprecation log records and its progress bars; returns the undo. Importing
    transformers.utils.logging does not import torch (half a second)."""
    try:
        from transformers.utils import logging as hf_logging
    except ImportError:  # pragma: no cover - transformers is a dependency
        return lambda: None
    logger = hf_logging.get_logger("transformers")  # also installs transformers' handler
    drop = _DropDeprecations()
    # records of child loggers (transformers.utils.generic, ...) pass the root's handlers, not its filters
    targets = [logger, *logger.handlers]
    for target in targets:
        target.addFilter(drop)
    bars = hf_logging.is_progress_bar_enabled()
    hf_logging.disable_progress_bar()

    def restore():
        for target in targets:
            target.removeFilter(drop)
        if bars:
            hf_logging.enable_progress_bar()

    return restore
