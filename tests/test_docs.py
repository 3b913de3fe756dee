"""README is the front door and docs/ the manual: every link resolves, the model table is the pin
table, and the training recipe's commands are the pixi tasks (and so the compose services)."""
import re
import shlex
import sys

from conftest import ROOT
from virnucpro.models import pins

if sys.version_info >= (3, 11):
    import tomllib
else:
    import tomli as tomllib

PAGES = [ROOT / "README.md", *sorted((ROOT / "docs").glob("*.md"))]
LINK = re.compile(r"\]\(([^)\s]+)\)")


def anchors(page) -> set[str]:
    """GitHub's anchors of a page's headings."""
    headings = [line.lstrip("#").strip() for line in page.read_text().splitlines() if line.startswith("#")]
    return {re.sub(r"[^\w\- ]", "", heading.lower()).replace(" ", "-") for heading in headings}


def table_rows(page, first_column: str) -> list[list[str]]:
    """The rows of the markdown table whose header starts with ``first_column``."""
    rows, inside = [], False
    for line in page.read_text().splitlines():
        cells = [cell.strip() for cell in line.strip().strip("|").split("|")]
        if line.startswith(f"| {first_column} |"):
            inside = True
        elif inside and line.startswith("|"):
            if not set(cells[0]) <= set("-:"):
                rows.append(cells)
        else:
            inside = False
    return rows


def test_readme_is_the_front_door():
    readme = (ROOT / "README.md").read_text()
    assert len(readme.encode()) < 20_000
    assert "\npython scripts/fetch_models.py && python prediction.py data/sample.fasta 300\n" in readme
    for page in PAGES[1:]:
        assert f"(docs/{page.name})" in readme, f"README does not link {page.name}"


def test_every_link_resolves():
    for page in PAGES:
        for target in LINK.findall(page.read_text()):
            if target.startswith(("http://", "https://")):
                continue
            path, _, anchor = target.partition("#")
            linked = (page.parent / path).resolve() if path else page
            assert linked.exists(), f"{page.name}: {target}"
            if anchor:
                assert anchor in anchors(linked), f"{page.name}: {target}"


def test_the_model_table_is_the_pin_table():
    rows = table_rows(ROOT / "docs/models.md", "item (`fetch_models.py`)")
    shown = {row[0].strip("`"): (row[2], row[3]) for row in rows}
    assert set(shown) == set(pins.ARTIFACTS)
    for key, item in pins.ARTIFACTS.items():
        source, revision = shown[key]
        if isinstance(item, pins.ModelSpec):
            assert source == f"`{item.hub_id}`" and revision.startswith(f"`{item.revision}`"), key
        else:
            assert source == f"GitHub `{item.repo}`" and revision == f"`{item.blob_sha1}`", key


def test_the_training_recipe_is_the_pixi_tasks():
    tasks = {name: shlex.split(command) for name, command in
             tomllib.loads((ROOT / "pixi.toml").read_text())["tasks"].items()}
    rows = table_rows(ROOT / "docs/training.md", "step")
    assert len(rows) >= 10
    for step, commands, names in rows:
        commands, names = re.findall(r"`([^`]+)`", commands), re.findall(r"`([^`]+)`", names)
        assert len(commands) == len(names), step
        for command, named in zip(commands, names):
            task, *extra = shlex.split(named)
            assert shlex.split(command) == tasks[task] + extra, step


def test_the_verdicts_shown_in_the_training_guide_are_the_example_reports():
    header = "level | accuracy drop (points)"
    shown = table_rows(ROOT / "docs/training.md", header)
    assert shown and shown == table_rows(ROOT / "reports/example_validation_report.md", header)
