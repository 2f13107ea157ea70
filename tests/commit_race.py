"""The row-lock race: a lock block's COMMIT waits on a row lock released around read_timeout.

Another transaction holds the row; the block overwrites it and commits with a short
``read_timeout``; the row lock is released at times spread around the timeout. Each
trial records what the block reported and what the database holds afterwards. Run
``python -m tests.commit_race URL TRIALS`` for more trials than the suite runs.
"""

from __future__ import annotations

import sys
import threading
import time
import uuid
from dataclasses import dataclass, field

import sqlalchemy as sa
from sqlalchemy.engine import URL, make_url

import sqlstore
from sqlstore import SQLFileStore

#: The block's read timeout, in seconds.
READ_TIMEOUT = 1.0
#: Release times of the row lock, relative to the read timeout (spread over trials).
EARLIEST, LATEST = -0.03, 0.25


@dataclass
class Outcomes:
    """What the trials reported, and every report that was not true."""

    in_time: int = 0  # answered before the timeout
    committed_after_timeout: int = 0  # answered too late (the connection discarded); committed
    not_committed: int = 0  # DatabaseTimeoutError: found rolled back
    unknown_committed: int = 0  # CommitUnknownError, and the block had committed
    unknown_not_committed: int = 0  # CommitUnknownError, and it had not
    false_answers: list[str] = field(default_factory=list)

    def summary(self) -> str:
        """The counts, in words."""
        return (
            f"{self.in_time} committed in time, {self.committed_after_timeout} committed "
            f"after the timeout (returned), {self.not_committed} did not commit "
            f"(DatabaseTimeoutError), {self.unknown_committed + self.unknown_not_committed} "
            f"unknown (CommitUnknownError: {self.unknown_committed} had committed, "
            f"{self.unknown_not_committed} had not); {len(self.false_answers)} false answers"
        )


def race(url: URL, namespace: str, trials: int) -> Outcomes:
    """Run ``trials`` trials in ``namespace`` of the migrated database at ``url``."""
    engine = sqlstore.create_engine(url, read_timeout=READ_TIMEOUT)
    discarded: list[object] = []
    sa.event.listen(engine, "invalidate", lambda conn, record, exc: discarded.append(exc))
    blocker = sa.create_engine(url, poolclass=sa.pool.NullPool)
    store = SQLFileStore(engine, namespace)
    outcomes = Outcomes()
    try:
        store.write("held", "before")
        for trial in range(trials):
            offset = EARLIEST + (LATEST - EARLIEST) * trial / max(1, trials - 1)
            discarded.clear()
            reported, committed = _trial(store, blocker, namespace, trial, READ_TIMEOUT + offset)
            _record(outcomes, trial, reported, committed, timed_out=bool(discarded))
    finally:
        engine.dispose()
        blocker.dispose()
    return outcomes


def _trial(
    store: SQLFileStore,
    blocker: sa.Engine,
    namespace: str,
    trial: int,
    release_after: float,
) -> tuple[BaseException | None, bool]:
    """What the block reported, and whether it committed."""
    value = f"trial {trial}"
    with blocker.connect() as conn:
        conn.execute(
            sa.text("UPDATE sqlstore_files SET size = size WHERE namespace = :ns"),
            {"ns": namespace},
        )
        release = threading.Timer(release_after, conn.rollback)
        release.start()
        reported: BaseException | None = None
        try:
            with store.lock("l", timeout=10):
                store.write("held", value)
        except sqlstore.DatabaseError as exc:
            reported = exc
        release.join()
    time.sleep(0.3)  # anything still under way in the server has ended by now
    return reported, store.read("held") == value


def _record(
    outcomes: Outcomes,
    trial: int,
    reported: BaseException | None,
    committed: bool,
    *,
    timed_out: bool,
) -> None:
    if reported is None:
        if timed_out:
            outcomes.committed_after_timeout += 1
        else:
            outcomes.in_time += 1
        if not committed:
            outcomes.false_answers.append(f"trial {trial}: returned, not committed")
    elif isinstance(reported, sqlstore.CommitUnknownError):
        if committed:
            outcomes.unknown_committed += 1
        else:
            outcomes.unknown_not_committed += 1
    elif isinstance(reported, sqlstore.DatabaseTimeoutError):
        outcomes.not_committed += 1
        if committed:
            outcomes.false_answers.append(f"trial {trial}: DatabaseTimeoutError, committed")
    else:
        outcomes.false_answers.append(f"trial {trial}: {type(reported).__name__}: {reported}")


if __name__ == "__main__":
    target, count = make_url(sys.argv[1]), int(sys.argv[2])
    print(race(target, f"race-{uuid.uuid4().hex}", count).summary())
