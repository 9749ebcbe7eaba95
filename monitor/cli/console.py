"""``monitor console``: the analyst's web console (uvicorn), and its accounts."""

from __future__ import annotations

import typer
from rich.console import Console

from monitor.cli.context import settings_of
from monitor.errors import ConfigError
from monitor.services.console import console_url

app = typer.Typer(help="The analyst's web console (alerts, evidence, signals, model health, reviews). Without a "
                  "command: serve it on MONITOR_CONSOLE__HOST:PORT (127.0.0.1:8080); `add-user` makes accounts.",
                  invoke_without_command=True)
console = Console()
ROLES = ("viewer", "reviewer", "admin")


@app.callback()
def serve(
    ctx: typer.Context,
    host: str | None = typer.Option(None, help="Address to bind (default: console.host, 127.0.0.1)"),
    port: int | None = typer.Option(None, min=1, max=65535, help="Port (default: console.port, 8080)"),
) -> None:
    """Serve the console on MONITOR_CONSOLE__HOST:PORT (127.0.0.1:8080) over the configured database.

    Sign-in is required: create accounts with `monitor console add-user`. The database must be at the
    code's schema (`monitor db upgrade`)."""
    if ctx.invoked_subcommand is not None:
        return
    import uvicorn

    from monitor.console.app import create_app
    from monitor.storage.migrations import require_head

    settings = settings_of(ctx)
    overrides = {k: v for k, v in (("host", host), ("port", port)) if v is not None}
    if overrides:
        settings = settings.model_copy(update={"console": settings.console.model_copy(update=overrides)})
    require_head(settings.database)
    app_ = create_app(settings)
    bind = settings.console
    console.print(f"console at [bold]{console_url(bind.host, bind.port)}[/] (secure cookie "
                  f"{'on' if bind.cookie_secure else 'off'}; Ctrl-C stops it)")
    uvicorn.run(app_, host=bind.host, port=bind.port, log_level=settings.log_level.lower(), proxy_headers=True,
                server_header=False)


@app.command("add-user")
def add_user(
    ctx: typer.Context,
    username: str = typer.Argument(..., help="Sign-in name (letters, digits, . _ - @)"),
    role: str = typer.Option("viewer", help="viewer (reads), reviewer (also reviews), admin (also sees users)"),
    password: str = typer.Option(..., prompt=True, hide_input=True, confirmation_prompt=True,
                                 help="At least 10 characters; prompted for when not given"),
    reset: bool = typer.Option(False, "--reset", help="Change the password and role of an existing account "
                                                      "(its open sessions end)"),
) -> None:
    """Create a console account (or with --reset, change one), storing an argon2 hash of the password."""
    from monitor.console.auth import check_username, hash_password
    from monitor.runtime import open_database
    from monitor.storage.reviews import add_user as store_user
    from monitor.storage.reviews import find_user, update_user
    from monitor.storage.session import transaction

    if role not in ROLES:
        raise ConfigError(f"unknown role {role!r}: use viewer, reviewer or admin")
    name = check_username(username)
    password_hash = hash_password(password)
    with transaction(open_database(settings_of(ctx), "require")) as session:
        existing = find_user(session, name)
        if existing is not None and not reset:
            raise ConfigError(f"user {name!r} exists; pass --reset to change its password and role")
        if existing is None:
            store_user(session, name, password_hash, role)
        else:
            update_user(session, name, password_hash=password_hash, role=role, active=True)
    console.print(f"[green]{'updated' if existing else 'added'}[/] {name} ({role})")
