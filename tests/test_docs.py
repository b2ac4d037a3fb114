"""The README and docs/ say what is true of the repository: CI runs the README's test command, and every link leads to
a file that exists."""

import re
from pathlib import Path

import pytest

ROOT = Path(__file__).parent.parent
PAGES = [ROOT / "README.md", *sorted((ROOT / "docs").glob("*.md")), ROOT / "benchmarks" / "README.md", ROOT / "data" / "README.md"]


def test_ci_runs_the_readmes_install_lint_and_test_command_character_for_character():
    readme = (ROOT / "README.md").read_text()
    commands = re.findall(r"```bash\n(python3\.11 -m venv .*)\n```", readme)
    assert len(commands) == 2  # install and run, install and test
    assert commands[1] in (ROOT / ".ci" / "run").read_text().splitlines()


@pytest.mark.parametrize("page", PAGES, ids=lambda p: str(p.relative_to(ROOT)))
def test_every_relative_link_leads_to_a_file(page):
    links = [target.split("#")[0] for target in re.findall(r"\]\(([^)\s]+)\)", page.read_text()) if "://" not in target]
    missing = [target for target in links if target and not (page.parent / target).exists()]
    assert not missing, f"{page.name} links to missing files: {missing}"
