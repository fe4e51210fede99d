"""`biofleet webhooks secret | rotate-secret --tenant T`: the tenant's callback signing secret.

Callbacks are signed per tenant (Standard Webhooks, shared.webhooks). `secret` prints the current
secret, for the tenant's receiver; `rotate-secret` makes a new one and prints it: the old one keeps
signing too (a second signature in webhook-signature) for BIOFLEET_CALLBACK_SECRET_GRACE_S.
"""

import click


def _tenant_id(session, tenant: str):
    from sqlalchemy import select

    from shared.db.models import Tenant

    tenant_id = session.execute(select(Tenant.id).where(Tenant.name == tenant)).scalar_one_or_none()
    if tenant_id is None:
        raise click.ClickException(f"no tenant {tenant!r}")
    return tenant_id


@click.group()
def webhooks() -> None:
    """Callback signing secrets, one per tenant."""


@webhooks.command("secret")
@click.option("--tenant", required=True, help="Tenant name.")
def show_secret(tenant: str) -> None:
    """Print TENANT's current signing secret (whsec_...), alone, on stdout."""
    from cli.common import database_url
    from shared.db.session import session_scope
    from shared.webhooks import ensure_secret

    with session_scope(database_url()) as session:
        secret = ensure_secret(session, _tenant_id(session, tenant))
    click.echo(secret)


@webhooks.command("rotate-secret")
@click.option("--tenant", required=True, help="Tenant name.")
def rotate(tenant: str) -> None:
    """Make a new signing secret for TENANT and print it; the old one signs too during the grace
    period (BIOFLEET_CALLBACK_SECRET_GRACE_S), then stops."""
    from cli.common import database_url
    from shared.db.session import session_scope
    from shared.settings import get_settings
    from shared.webhooks import UnknownTenant, rotate_secret

    grace_s = get_settings().callback_secret_grace_s
    try:
        with session_scope(database_url()) as session:
            secret = rotate_secret(session, tenant, grace_s)
    except UnknownTenant:
        raise click.ClickException(f"no tenant {tenant!r}") from None
    click.echo(secret)
    click.echo(f"the previous secret keeps signing for {grace_s} s", err=True)


COMMANDS = [webhooks]
