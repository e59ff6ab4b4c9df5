"""A run's lease while it runs: renewed from its own thread, checked inside each write.

ARCHITECTURE.md, "The life of a run" (invariant 4) and "Fencing".
"""

from __future__ import annotations

import threading
import time
from typing import Any

import psycopg

from . import db
from .jobs.base import Fence
from .settings import Settings
from .store import ledger
from .vocab import Claim

# A renewal that failed is tried again this soon (not a third of the lease later), while
# the lease still has time left.
RETRY_S = 1.0
# A cancel asked for through the API reaches the run within this long.
CANCEL_CHECK_S = 2.0


class LeaseKeeper:
    """Renews a run's lease every LEASE_SECONDS / 3 from its own thread and connection.

    A renewal that fails for want of the database is retried, on a new connection, while
    the lease still has time left (`lease_renewal_failed`, once per streak): a database or
    pooler that blinks never stops a healthy run. Only a lease that really expired (by the
    monotonic clock: no renewal for LEASE_SECONDS) or was taken over sets `lost` and logs
    `lease_lost`: the run starts no more items, and its writes are refused (`fence`).
    """

    def __init__(self, settings: Settings, claim: Claim, log: Any) -> None:
        self.settings, self.claim, self.log = settings, claim, log
        self.lost = threading.Event()
        self.cancelled = threading.Event()  # someone asked the run to stop
        # Measured from now, a little after the claim: the margin covers the hand-over.
        self.expires_at = time.monotonic() + settings.lease_s - 1.0
        self._done = threading.Event()
        self._lost_logged = threading.Lock()
        self._thread = threading.Thread(target=self._keep, name="lease-keeper", daemon=True)

    def __enter__(self) -> LeaseKeeper:
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._done.set()
        self._thread.join()

    def fence(self) -> Fence:
        """The check each of the run's transactions makes first (`JobContext.transaction`)."""
        return Fence(
            job=self.claim.job,
            run_id=self.claim.run.id,
            owner=self.claim.owner,
            # Transaction-local; below the lease, so a frozen process's open transaction is
            # ended by the server before another replica may take the job over.
            idle_timeout_ms=int(self.settings.lease_s * 1000 / 2),
            lost=lambda: self._lose("a write found the lease taken over"),
        )

    def _keep(self) -> None:
        lease_s = self.settings.lease_s
        conn: db.Conn | None = None
        wait_s, failing = lease_s / 3, False
        renew_at = time.monotonic() + wait_s
        try:
            while not self._done.wait(min(wait_s, CANCEL_CHECK_S)):
                sent = time.monotonic()
                try:
                    conn = conn or db.connect(
                        self.settings.database, application_name=f"worker:{self.claim.job}:lease"
                    )
                    self._check_cancel(conn)
                    if sent < renew_at:
                        continue
                    renewed = ledger.renew(conn, self.claim, lease_s)
                except psycopg.Error as exc:
                    if conn is not None:
                        conn.close()
                        conn = None
                    if time.monotonic() >= self.expires_at:
                        return self._lose(f"the lease expired: {db.describe_error(exc)}")
                    if not failing:
                        self.log.warning(
                            "lease_renewal_failed",
                            job=self.claim.job,
                            run_id=self.claim.run.id,
                            error=db.describe_error(exc),
                            lease_left_s=round(self.expires_at - time.monotonic(), 1),
                        )
                    failing, wait_s = True, min(RETRY_S, max(self.expires_at - sent, 0.0))
                    renew_at = sent + wait_s
                    continue
                if not renewed:
                    return self._lose("the lease expired and was taken over")
                self.expires_at = sent + lease_s
                if failing:
                    self.log.info("lease_renewed", job=self.claim.job, run_id=self.claim.run.id)
                failing, wait_s = False, lease_s / 3
                renew_at = sent + wait_s
        finally:
            if conn is not None:
                conn.close()

    def _check_cancel(self, conn: db.Conn) -> None:
        if not self.cancelled.is_set() and ledger.cancel_requested(conn, self.claim.run.id):
            self.log.info("run_cancel_seen", job=self.claim.job, run_id=self.claim.run.id)
            self.cancelled.set()

    def _lose(self, error: str) -> None:
        with self._lost_logged:
            if self.lost.is_set():
                return
            self.lost.set()
        self.log.error("lease_lost", job=self.claim.job, run_id=self.claim.run.id, error=error)
