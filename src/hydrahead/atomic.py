"""Directories written all or nothing: into `NAME.partial` beside the final one, renamed when complete.

A process killed mid-write leaves only a `NAME.partial` folder, never one that looks finished (a model
directory without weights, a results folder without its metrics). The next write into the same place
removes such leftovers and says so. Each partial folder names its writer (host and process id) in a small
file, so that a folder that another live process is still writing is left alone.
"""

from __future__ import annotations

import contextlib
import datetime as _dt
import os
import shutil
import socket
import sys
import time
from collections.abc import Iterator
from pathlib import Path

from .errors import HydraheadError

OWNER = ".hydrahead-writer"
# a partial folder without an owner file may be one a writer has just made: leave it alone this long
GRACE_S = 60


class WriteError(HydraheadError):
    """An output that cannot be written, or that another process is writing."""


def notice(message: str) -> None:
    print(f"hydrahead: {message}", file=sys.stderr)


def partial_of(final: Path) -> Path:
    final = Path(final)
    return final.with_name(final.name + ".partial")


def _claim(partial: Path) -> None:
    (partial / OWNER).write_text(f"{socket.gethostname()} {os.getpid()}\n")


def writer(partial: Path) -> str | None:
    """Who is still writing `partial` ("pid N on HOST"), or None when nobody is: its writer has exited."""
    try:
        host, pid = (partial / OWNER).read_text().split()
        pid_n = int(pid)
    except (OSError, ValueError):  # no owner file: an older hydrahead's leftover, or a writer just starting
        young = time.time() - partial.stat().st_mtime < GRACE_S
        return "a writer that has just started" if young else None
    if host != socket.gethostname():
        return f"pid {pid_n} on {host}"  # another machine on a shared disk: we cannot tell, so keep it
    try:
        os.kill(pid_n, 0)
    except ProcessLookupError:
        return None
    except PermissionError:  # alive, someone else's
        pass
    return f"pid {pid_n} on {host}"  # our own pid too: another write of this process, still open


def clear_stale(partial: Path) -> None:
    """Remove `partial` if its writer is gone (saying so); refuse if a live process is writing it."""
    if not partial.is_dir():
        return
    who = writer(partial)
    if who is not None:
        raise WriteError(f"{partial} is being written by another process ({who}); wait for it, or give another path")
    shutil.rmtree(partial)
    notice(f"removed {partial}, left by an interrupted run")


def clear_stale_under(root: Path) -> None:
    """The leftover `*.partial` folders of interrupted runs in a results folder: removed, or reported when a
    live process still writes them."""
    root = Path(root)
    if not root.is_dir():
        return
    for partial in sorted(p for p in root.glob("*.partial") if p.is_dir()):
        who = writer(partial)
        if who is None:
            shutil.rmtree(partial, ignore_errors=True)
            notice(f"removed {partial}, left by an interrupted run")
        else:
            notice(f"{partial} is being written by another process ({who}); left alone")


def _install(partial: Path, final: Path) -> None:
    """Rename the finished `partial` to `final`; an existing `final` is replaced only once the new one is
    complete (moved aside to NAME.old first, so that a kill in between loses neither)."""
    (partial / OWNER).unlink(missing_ok=True)
    if not final.exists():
        os.rename(partial, final)
        return
    old = final.with_name(final.name + ".old")
    shutil.rmtree(old, ignore_errors=True)
    os.rename(final, old)
    os.rename(partial, final)
    shutil.rmtree(old, ignore_errors=True)


@contextlib.contextmanager
def atomic_dir(final: str | os.PathLike) -> Iterator[Path]:
    """Yield `final`.partial to write into; when the block ends it becomes `final` (replacing an older one),
    and if the block fails or is interrupted it is removed. Callers check that replacing `final` is wanted."""
    final = Path(final)
    partial = partial_of(final)
    final.parent.mkdir(parents=True, exist_ok=True)
    old = final.with_name(final.name + ".old")
    if old.is_dir() and not final.exists():  # killed between the two renames of _install: the old one is whole
        os.rename(old, final)
    clear_stale(partial)
    try:
        partial.mkdir()
    except FileExistsError:
        raise WriteError(f"{partial} is being written by another process; wait for it, or give another path") from None
    try:
        _claim(partial)
        yield partial
        _install(partial, final)
    except BaseException:
        shutil.rmtree(partial, ignore_errors=True)
        raise


def _claim_unique(root: Path, name: str) -> tuple[Path, Path]:
    """A final path under `root` that no other writer has or is writing, and its claimed partial folder.
    Claiming is a mkdir, which only one process can win, so two runs in the same second never collide."""
    base = f"{name}_{_dt.datetime.now().strftime('%Y-%m-%dT%H-%M-%S')}"
    for n in range(1, 10_000):
        final = root / (base if n == 1 else f"{base}_{n}")
        partial = partial_of(final)
        if final.exists():
            continue
        try:
            partial.mkdir()
        except FileExistsError:
            continue
        if final.exists():  # another writer renamed its partial to this name just before our mkdir
            partial.rmdir()
            continue
        _claim(partial)
        return final, partial
    raise WriteError(f"no free results folder name under {root} for {base}")


@contextlib.contextmanager
def new_results_dir(output_path: str | os.PathLike, name: str) -> Iterator[Path]:
    """Yield a new folder's partial under `output_path` to write into; it is renamed to its final name (yielded
    path without '.partial', see `final_of`) when the block ends. Leftovers of interrupted runs are cleared first."""
    root = Path(output_path)
    root.mkdir(parents=True, exist_ok=True)
    clear_stale_under(root)
    final, partial = _claim_unique(root, name)
    try:
        yield partial
        (partial / OWNER).unlink(missing_ok=True)
        os.rename(partial, final)
    except BaseException:
        shutil.rmtree(partial, ignore_errors=True)
        raise


def final_of(partial: Path) -> Path:
    """The name a partial folder will have once complete."""
    return partial.with_name(partial.name.removesuffix(".partial"))
