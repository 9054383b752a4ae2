"""The configuration is documented: every Settings field is in .env.example and the README."""

from __future__ import annotations

from pathlib import Path

from robosystems.config import Settings

ROOT = Path(__file__).resolve().parent.parent


def test_every_setting_is_documented() -> None:
    env_example = (ROOT / ".env.example").read_text()
    readme = (ROOT / "README.md").read_text()
    env_keys = {
        line.split("=", 1)[0].strip() for line in env_example.splitlines() if "=" in line and not line.startswith("#")
    }
    missing_env = [n.upper() for n in Settings.model_fields if n.upper() not in env_keys]
    missing_readme = [n.upper() for n in Settings.model_fields if f"`{n.upper()}`" not in readme]
    assert missing_env == []
    assert missing_readme == []


def test_readme_opens_with_the_two_commands() -> None:
    head = (ROOT / "README.md").read_text().splitlines()[:6]
    assert any(line.startswith("python3 run.py serve") for line in head)
    assert any(line.startswith("python3 run.py test") for line in head)


def test_readme_shows_the_policy_table_of_the_code() -> None:
    from robosystems.orgs.policy import policy_table_markdown

    assert policy_table_markdown() in (ROOT / "README.md").read_text()
