"""Every gp-proxy command written in the README and docs/ still parses against the CLI:
an unknown subcommand or option fails here, so the docs cannot drift from the code."""

from __future__ import annotations

import re
import shlex
from pathlib import Path

import pytest
import typer

from gp_proxy.cli import app

ROOT = Path(__file__).resolve().parents[1]
PAGES = [ROOT / "README.md", *sorted((ROOT / "docs").glob("*.md"))]


def _commands(page: Path) -> list[tuple[int, str]]:
    """``gp-proxy ...`` lines of the page's code blocks (continuations joined)."""
    out, in_block, buf, start = [], False, "", 0
    for i, line in enumerate(page.read_text().splitlines(), start=1):
        if line.startswith("```"):
            in_block = not in_block
            continue
        if not in_block:
            continue
        text = line.split("#", 1)[0].rstrip() if not line.lstrip().startswith("gp-proxy") \
            else re.sub(r"\s+#\s.*$", "", line)
        if buf:
            buf += " " + text.strip()
        elif re.search(r"(^|\s|&& )(nice )?gp-proxy\s", " " + text):
            buf, start = text[text.index("gp-proxy"):], i
        if buf and buf.endswith("\\"):
            buf = buf[:-1]
            continue
        if buf:
            out.append((start, buf.split("&&")[0].strip()))
            buf = ""
    return out


CASES = [(p, n, c) for p in PAGES for n, c in _commands(p)]


def test_the_pages_hold_commands() -> None:
    assert len(CASES) >= 15


@pytest.mark.parametrize(("page", "line", "command"), CASES,
                         ids=[f"{p.name}:{n}" for p, n, _ in CASES])
def test_documented_command_parses(page: Path, line: int, command: str) -> None:
    cmd = typer.main.get_command(app)  # the click command tree typer builds
    args = shlex.split(command)[1:]
    while hasattr(cmd, "commands") and args and not args[0].startswith("-"):
        sub = cmd.commands.get(args[0])
        assert sub is not None, f"{page.name}:{line}: unknown subcommand {args[0]!r}"
        cmd, args = sub, args[1:]
    known = {o for p in cmd.params for o in getattr(p, "opts", [])}
    known |= {o for p in cmd.params for o in getattr(p, "secondary_opts", [])}
    for a in args:
        if a.startswith("--"):
            opt = a.split("=", 1)[0]
            assert opt in known, f"{page.name}:{line}: {cmd.name} has no option {opt}"


def test_the_layout_section_and_page_are_generated_from_the_code() -> None:
    """The README's layout table and docs/layout.md are what ``python docs/layout.py`` writes
    from the packages' docstrings now, and every package stands in its order."""
    import importlib.util

    spec = importlib.util.spec_from_file_location("layout", ROOT / "docs" / "layout.py")
    assert spec is not None and spec.loader is not None
    layout = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(layout)
    assert layout.missing() == [], "packages missing from docs/layout.py ORDER"
    assert layout.readme_section() in (ROOT / "README.md").read_text(), \
        "README layout section is stale: run python docs/layout.py"
    assert (ROOT / "docs" / "layout.md").read_text() == layout.layout_page(), \
        "docs/layout.md is stale: run python docs/layout.py"
