from pathlib import Path

from reasonloop import configdoc

ROOT = Path(__file__).resolve().parents[1]


def test_config_reference_is_up_to_date():
    committed = (ROOT / "docs" / "config.md").read_text()
    assert committed.strip() == configdoc.render().strip(), "regenerate: python -m reasonloop.configdoc > docs/config.md"


def test_readme_quick_start_commands_exist():
    readme = (ROOT / "README.md").read_text()
    assert "./dev.sh train" in readme and "./dev.sh test" in readme
    assert "./dev.sh test" in (ROOT / ".ci" / "run").read_text()
