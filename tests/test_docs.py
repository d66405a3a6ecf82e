"""The README stays true to the code: output columns, set-up commands, CI entry point."""

from __future__ import annotations

from pathlib import Path

from batch_parse.output.schema import BASE_SCHEMA, COLUMN_DOCS

ROOT = Path(__file__).resolve().parents[1]
README = (ROOT / "README.md").read_text()


def test_readme_documents_every_output_column_as_the_schema_does():
    for column, text in COLUMN_DOCS.items():
        assert f"| `{column}` | {text} |" in README, column
    documented = set(COLUMN_DOCS)
    for field in BASE_SCHEMA:
        generic = field.name
        for part in ("brow_1", "brow_2", "eye_1", "eye_2", "nose", "mouth"):
            generic = generic.replace(f"{part}_", "<part>_") if generic.startswith(f"{part}_") else generic
        if generic.startswith("pixels_"):
            generic = "pixels_<class>"
        assert generic in documented, field.name


def test_quick_start_is_two_commands_and_ci_runs_the_test_one():
    block = README.split("## Quick start", 1)[1].split("##", 1)[0]
    commands = [line.split("#")[0].strip() for line in block.splitlines() if line.startswith("    ")]
    assert commands == ["scripts/demo", "scripts/test"]
    ci = (ROOT / ".ci" / "run").read_text()
    assert ci.strip().splitlines()[-1] == "exec scripts/test"
