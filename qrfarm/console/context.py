"""What every console page needs, made once when the console is mounted."""

from __future__ import annotations

import datetime as dt
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from fastapi import Request
from fastapi.templating import Jinja2Templates

from qrfarm.client import Client
from qrfarm.config import Settings

HERE = Path(__file__).parent


@dataclass
class ConsoleContext:
    client: Client
    key: bytes
    session_max_age_s: int
    templates: Jinja2Templates

    @property
    def settings(self) -> Settings:
        return self.client.settings


def console_context(request: Request) -> ConsoleContext:
    ctx: ConsoleContext = request.app.state.console
    return ctx


def _when(value: Any) -> str:
    """A stored time (naive UTC, or its ISO text) as shown: to the second, with 'UTC'."""
    if value is None:
        return ""
    moment = value
    if isinstance(value, str):
        try:
            moment = dt.datetime.fromisoformat(value)
        except ValueError:
            return value
    if isinstance(moment, dt.datetime):
        return f"{moment:%Y-%m-%d %H:%M:%S} UTC"
    return str(value)


def make_templates() -> Jinja2Templates:
    # Autoescaping is on for .html: every value from the database is text.
    templates = Jinja2Templates(directory=str(HERE / "templates"))
    templates.env.filters["when"] = _when
    return templates
