"""Alembic entry points used by the CLI, ``serve`` and the tests."""

from __future__ import annotations

from argparse import Namespace
from collections.abc import Sequence
from pathlib import Path

from alembic.config import Config

from alembic import command
from robosystems.db import sync_url

ROOT = Path(__file__).resolve().parent.parent


def alembic_config(url: str | None = None, *, allow_data_loss: bool = False, x_args: Sequence[str] = ()) -> Config:
    x_args = (["allow_data_loss=true"] if allow_data_loss else []) + list(x_args)
    cfg = Config(str(ROOT / "alembic.ini"), cmd_opts=Namespace(x=x_args))
    cfg.set_main_option("script_location", str(ROOT / "alembic"))
    cfg.set_main_option("sqlalchemy.url", sync_url(url).replace("%", "%%"))
    return cfg


def upgrade(revision: str = "head", url: str | None = None, *, x_args: Sequence[str] = ()) -> None:
    """``x_args``: Alembic ``-x`` values (``key=value``), e.g. ``orphan_graphs_owner=<user_id>``."""
    command.upgrade(alembic_config(url, x_args=x_args), revision)


def downgrade(revision: str, url: str | None = None, *, allow_data_loss: bool = False) -> None:
    command.downgrade(alembic_config(url, allow_data_loss=allow_data_loss), revision)
