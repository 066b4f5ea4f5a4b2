"""The README and docs/ as a new user follows them: every file a shown command reads is shipped or made by
another shown command (under runs/ or results/), every command writes only under runs/ or results/
(git-ignored), and every link and image points at a file that exists."""

import re
import shlex

import pytest

from ..conftest import ROOT

PAGES = [ROOT / "README.md", *sorted((ROOT / "docs").glob("*.md"))]
READS = {"--model", "--teacher", "--tokenizer", "--plan", "--init", "--config", "--data", "--scores", "--roles",
         "--prompt_file"}
WRITES = {"--out", "--output_path", "--results", "--plot"}
MADE = ("runs/", "results/")


def commands(text: str):
    """Every `hydrahead` / `torchrun` command line in the page's code blocks ($ prompts and continuations
    joined), except the examples of bad input, whose output is the error they show."""
    for block in re.findall(r"```[a-z]*\n(.*?)```", text, flags=re.S):
        lines = block.replace("\\\n", " ").splitlines()
        for line, following in zip(lines, [*lines[1:], ""]):
            line = line.removeprefix("$ ").split("#")[0].strip()
            if line.startswith(("hydrahead ", "torchrun ")) and not following.startswith("hydrahead: error:"):
                yield shlex.split(line)


def flag_values(argv):
    for flag, value in zip(argv, argv[1:]):
        yield flag.replace("-", "_").replace("__", "--", 1), value


@pytest.mark.parametrize("page", PAGES, ids=lambda p: p.name)
def test_shown_commands_read_shipped_files_and_write_only_ignored_folders(page):
    text = page.read_text()
    argvs = list(commands(text))
    assert argvs or page.name != "README.md"
    for argv in argvs:
        for flag, value in flag_values(argv):
            if flag in READS:
                assert (ROOT / value).exists() or value.startswith(MADE), f"{page.name}: {flag} {value} is not shipped"
            if flag in WRITES:
                assert value.startswith(MADE), f"{page.name}: {flag} {value} writes outside runs/ and results/"


@pytest.mark.parametrize("page", PAGES, ids=lambda p: p.name)
def test_links_and_images_point_at_files(page):
    for target in re.findall(r"\]\(([^)#\s]+)(?:#[^)]*)?\)", page.read_text()):
        if target.startswith("http"):
            continue
        assert (page.parent / target).exists(), f"{page.name} links to {target}, which does not exist"


def test_runs_and_results_are_ignored_by_git():
    ignored = ROOT.joinpath(".gitignore").read_text().split()
    assert "runs/" in ignored and "results/" in ignored
