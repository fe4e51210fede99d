"""`biofleet retention run`: delete stored images past their retention (shared.retention)."""

import click


@click.group()
def retention() -> None:
    """Image retention."""


@retention.command("run")
def retention_run() -> None:
    """Delete enrollment images older than BIOFLEET_ENROLLMENT_RETENTION_DAYS and probe images
    older than BIOFLEET_PROBE_RETENTION_S (of final jobs); print what was deleted as JSON."""
    import json
    from dataclasses import asdict

    from shared.blob import open_blob_store
    from shared.retention import run_retention
    from shared.services import resolve
    from shared.settings import get_settings

    settings = get_settings()
    try:
        urls = resolve(settings)
    except Exception as exc:
        raise click.ClickException(f"no services: {exc}") from None
    report = run_retention(urls.database_url, open_blob_store(urls.blob_url), settings)
    click.echo(json.dumps(asdict(report)))


COMMANDS = [retention]
