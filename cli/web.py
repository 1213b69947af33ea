"""``unembargo web``: the dataflow page (read-only unless ``--actions``), loopback by default."""

from __future__ import annotations

import asyncio
import logging
from typing import Annotated

import typer

from unembargo.models.settings import Settings


def web(
    ctx: typer.Context,
    host: Annotated[
        str | None, typer.Option(help="Address (default: UNEMBARGO_WEB_HOST or 127.0.0.1).")
    ] = None,
    port: Annotated[int | None, typer.Option(help="Port (default: UNEMBARGO_WEB_PORT or 8088).")] = None,
    actions: Annotated[
        bool, typer.Option("--actions", help="Enable retry, reset and signal (needs UNEMBARGO_WEB_TOKEN).")
    ] = False,
) -> None:
    """Serve the dataflow page: every flow's counts, units, failures and queues, and its JSON.

    Actions are off unless --actions is given, and then need the token of UNEMBARGO_WEB_TOKEN
    (never a command-line argument) as a Bearer header or through the sign-in form.
    """
    from unembargo.web.app import serve
    from unembargo.web.config import WebConfig, WebSettings

    settings: Settings = ctx.obj
    web_settings = WebSettings()
    if actions and (web_settings.token is None or not web_settings.token.get_secret_value()):
        raise typer.BadParameter("--actions needs a token: set UNEMBARGO_WEB_TOKEN")
    config = WebConfig(settings=settings, actions_enabled=actions, token=web_settings.token)
    # Each action is logged (who, what, which unit, the outcome), whatever the command's level.
    logging.getLogger("unembargo.web.actions").setLevel(logging.INFO)
    asyncio.run(serve(config, host or web_settings.host, port or web_settings.port))
