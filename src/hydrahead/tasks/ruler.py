"""What files made by RULER's own scripts need beyond the line format: the task name (RULER writes
`<task>/validation.jsonl`), its answer budgets, and a length bucket per sample (RULER records each
sample's own token count, so one file holds many slightly different lengths)."""

from __future__ import annotations

from pathlib import Path

# RULER's tokens_to_generate (scripts/data/synthetic/constants.py) by the task names of its synthetic.yaml
RULER_BUDGETS = {"niah": 128, "vt": 30, "cwe": 120, "fwe": 50, "qa": 32}
# the file names RULER's prepare.py writes (its --subset); the task is then the folder's name
RULER_SUBSETS = ("validation", "test")


def task_from_path(path: Path) -> str:
    """`.../niah_single_1/validation.jsonl` -> niah_single_1; any other file is named by its stem."""
    path = Path(path)
    if path.stem in RULER_SUBSETS and path.parent.name:
        return path.parent.resolve().name
    return path.stem


def ruler_budget(task: str) -> int | None:
    """RULER's answer budget for one of its task names (niah_*, vt, cwe, fwe, qa_*), else None."""
    family = task.split("_")[0]
    return RULER_BUDGETS.get(family) if family in ("niah", "qa") or task in RULER_BUDGETS else None


def ruler_metric(task: str) -> str:
    """RULER scores its QA tasks by string_match_part, everything else by string_match_all."""
    return "string_match_part" if task.startswith("qa_") else "string_match_all"


def length_from_path(path: Path) -> int | None:
    """RULER keeps a run's data in `<max_seq_length>/data/<task>/<subset>.jsonl`: that length, if there."""
    parts = Path(path).resolve().parts
    if len(parts) >= 4 and parts[-3] == "data" and parts[-4].isdigit():
        return int(parts[-4])
    return None


def length_bucket(length: int) -> int:
    """A sample's own token count rounded up to the next power of two: RULER's standard lengths (4k ... 128k)
    and ours (512, 1k, ...) are powers of two, and RULER fits every sample at or just under its length."""
    if length <= 0:
        return 0
    return 1 << (length - 1).bit_length()
