"""Prometheus metrics of the callback dispatcher (`python -m worker --callbacks`), served on
settings.callbacks_metrics_port (0 = off).

biofleet_callback_attempts_total{outcome}  delivery attempts: delivered, retry, failed (counter)
biofleet_callbacks_pending                 outbox rows waiting to be delivered (gauge, counted by
                                           the dispatcher every PENDING_EVERY_S on the partial index
                                           of pending rows, never on a scrape)
biofleet_callbacks_in_flight               posts this dispatcher has running (gauge)
"""

import logging
import time
from collections.abc import Callable
from contextlib import AbstractContextManager

from prometheus_client import Counter, Gauge
from sqlalchemy import func, select
from sqlalchemy.orm import Session

from shared.db.models import CallbackDelivery

log = logging.getLogger(__name__)

PENDING_EVERY_S = 5.0
OUTCOMES = {"delivered": "delivered", "pending": "retry", "failed": "failed"}

ATTEMPTS = Counter("biofleet_callback_attempts", "Callback delivery attempts by outcome.", ["outcome"])
PENDING = Gauge("biofleet_callbacks_pending", "Outbox rows waiting to be delivered (status pending).")
IN_FLIGHT = Gauge("biofleet_callbacks_in_flight", "Callback posts this dispatcher has running.")
for _outcome in OUTCOMES.values():
    ATTEMPTS.labels(outcome=_outcome)  # every series exists from the start, at 0


def attempted(status: str) -> None:
    """Count one attempt whose row ended `status` (delivered, pending = retry later, failed)."""
    ATTEMPTS.labels(outcome=OUTCOMES.get(status, "retry")).inc()


class PendingGauge:
    """Refreshes biofleet_callbacks_pending at most every PENDING_EVERY_S."""

    def __init__(self, every_s: float = PENDING_EVERY_S) -> None:
        self.every_s = every_s
        self.next_at = 0.0

    def refresh(self, session_factory: Callable[[], AbstractContextManager[Session]]) -> None:
        now = time.monotonic()
        if now < self.next_at:
            return
        self.next_at = now + self.every_s
        try:
            with session_factory() as session:
                count = session.execute(
                    select(func.count()).select_from(CallbackDelivery).where(CallbackDelivery.status == "pending")
                ).scalar_one()
        except Exception as exc:
            log.warning("pending callbacks not counted", extra={"error": type(exc).__name__})
            return
        PENDING.set(count)
