"""API keys: created once, shown once, stored only as sha256.

create_api_key(session, tenant_name) -> the plain key (the tenant is created when missing).
tenant_for_key(session, key) -> tenant id, or None for an unknown or revoked key.
revoke_api_key(session, key) -> True when a live key was revoked.
The caller owns the transaction (e.g. shared.db.session.session_scope).
"""

import hashlib
import secrets
import uuid

from sqlalchemy import func, select, update
from sqlalchemy.dialects.postgresql import insert
from sqlalchemy.orm import Session

from shared.db.models import ApiKey, Tenant, new_id
from shared.webhooks import new_secret

KEY_PREFIX = "bf_"
SHOWN_CHARS = 12  # how much of a key the prefix column keeps, to tell keys apart


def hash_key(key: str) -> str:
    """sha256 hex of the whole key."""
    return hashlib.sha256(key.encode()).hexdigest()


def get_or_create_tenant(session: Session, name: str) -> uuid.UUID:
    """The id of the tenant called name, created if missing with its webhook signing secret (safe
    under concurrent callers)."""
    if not name or len(name) > 200:
        raise ValueError("tenant name must be 1-200 characters")
    session.execute(
        insert(Tenant)
        .values(id=new_id(), name=name, webhook_secret=new_secret())
        .on_conflict_do_nothing(index_elements=["name"])
    )
    return session.execute(select(Tenant.id).where(Tenant.name == name)).scalar_one()


def create_api_key(session: Session, tenant_name: str) -> str:
    """Create a key for tenant_name and return it; only its hash is stored."""
    tenant_id = get_or_create_tenant(session, tenant_name)
    key = KEY_PREFIX + secrets.token_urlsafe(32)
    session.add(ApiKey(tenant_id=tenant_id, prefix=key[:SHOWN_CHARS], key_hash=hash_key(key)))
    session.flush()
    return key


def tenant_for_key(session: Session, key: str) -> uuid.UUID | None:
    """The tenant id owning key, or None when the key is unknown or revoked."""
    if not key:
        return None
    return session.execute(
        select(ApiKey.tenant_id).where(ApiKey.key_hash == hash_key(key), ApiKey.revoked_at.is_(None))
    ).scalar_one_or_none()


def revoke_api_key(session: Session, key: str) -> bool:
    """Mark key revoked; True if a live key was found."""
    result = session.execute(
        update(ApiKey)
        .where(ApiKey.key_hash == hash_key(key), ApiKey.revoked_at.is_(None))
        .values(revoked_at=func.now())
    )
    return bool(getattr(result, "rowcount", 0))  # a CursorResult for an UPDATE
