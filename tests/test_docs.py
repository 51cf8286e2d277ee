from pathlib import Path

from projections.docs import with_rules_table
from projections.rules import RULES


def test_readme_rules_table_is_generated_from_the_rules_data():
    readme = (Path(__file__).parent.parent / "README.md").read_text(encoding="utf-8")
    assert with_rules_table(readme) == readme, "run `make docs` to regenerate the rules table"
    for rule_id in RULES:
        assert f"| {rule_id} |" in readme
