"""Citus (distributed PostgreSQL): sqlstore's tables distributed by namespace, co-located.

On a Citus coordinator the migrations leave both tables distributed by ``namespace``
and co-located, so every statement sqlstore runs for one namespace (it names the
namespace in each) is routed whole to the one worker holding that namespace's shard.
The locks stay on the coordinator: a lock block's ``pg_advisory_xact_lock`` is taken in
the coordinator's session, which every writer goes through. A worker can run queries
on distributed tables too, but its advisory locks are its own, so sqlstore refuses one.

Every function here takes a ``rows(sql)`` callable that runs literal SQL and returns
its rows, so it serves a migration's SQLAlchemy connection and a pooled DBAPI
connection alike.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Any

from .base import TABLES

#: Runs one literal SQL statement and returns its rows.
Rows = Callable[[str], Sequence[Sequence[Any]]]

#: The distribution column: it leads every key, and every statement names it.
DISTRIBUTION_COLUMN = "namespace"
#: The node group Citus gives the coordinator.
_COORDINATOR_GROUP = 0


@dataclass(frozen=True)
class Layout:
    """How sqlstore's tables lie on a Citus cluster.

    Attributes:
        distributed: Whether both tables are distributed by namespace.
        colocated: Whether their shards are co-located (a namespace's files and chunks
            on one worker).
        shards: Shards of ``sqlstore_files``.
        workers: Shards of ``sqlstore_files`` per worker, as ``host:port``.
    """

    distributed: bool
    colocated: bool
    shards: int
    workers: dict[str, int] = field(default_factory=dict)

    def describe(self) -> str:
        """One line: distributed or not, the shard count, the workers."""
        if not self.distributed:
            return "Citus: sqlstore's tables are not distributed (local to the coordinator)"
        where = ", ".join(f"{node} ({count} shards)" for node, count in self.workers.items())
        together = "co-located" if self.colocated else "NOT co-located"
        return (
            f"Citus: distributed by {DISTRIBUTION_COLUMN}, {together}, {self.shards} shards "
            f"on {len(self.workers)} workers: {where}"
        )


def installed(rows: Rows) -> bool:
    """Whether the database has the ``citus`` extension."""
    return bool(rows("SELECT 1 FROM pg_extension WHERE extname = 'citus'"))


def worker_problem(rows: Rows) -> str | None:
    """Why sqlstore must not use this node, if it is a Citus worker; ``None`` otherwise.

    Only call it where :func:`installed` is true.
    """
    group = rows("SELECT groupid FROM pg_dist_local_group")
    if not group or group[0][0] == _COORDINATOR_GROUP:
        return None
    found = rows(
        "SELECT nodename || ':' || nodeport FROM pg_dist_node"
        f" WHERE groupid = {_COORDINATOR_GROUP} AND noderole = 'primary'"
    )
    coordinator = f"the coordinator at {found[0][0]}" if found else "the cluster's coordinator"
    return (
        f"this is a Citus worker (node group {group[0][0]}), not the coordinator: sqlstore's "
        "locks are advisory locks of the node they are taken on, so a lock taken on a worker "
        f"excludes no writer on another node. Point sqlstore at {coordinator}"
    )


def distributed_tables(rows: Rows) -> set[str]:
    """Which of sqlstore's tables are distributed tables."""
    names = ", ".join(f"'{table}'" for table in TABLES)
    found = rows(
        "SELECT logicalrelid::regclass::text FROM pg_dist_partition"
        f" WHERE logicalrelid::regclass::text IN ({names})"
    )
    return {str(name) for (name,) in found}


def distribute(rows: Rows) -> bool:
    """Distribute sqlstore's tables by namespace, co-located; whether anything changed.

    Idempotent: tables already distributed stay as they are. Does nothing while the
    tables are missing or their keys do not lead with the namespace (revision 0001):
    the migration to the namespace keys distributes them afterwards.
    """
    if not _keys_lead_with_namespace(rows):
        return False
    done = distributed_tables(rows)
    changed = False
    colocate = "default"
    for table in TABLES:
        if table not in done:
            had_rows = bool(rows(f"SELECT 1 FROM {table} LIMIT 1"))
            rows(
                f"SELECT create_distributed_table('{table}', '{DISTRIBUTION_COLUMN}',"
                f" colocate_with => '{colocate}')"
            )
            if had_rows:
                # The rows were copied into the shards; the coordinator's own copy
                # is no longer read, only kept until truncated.
                rows(f"SELECT truncate_local_data_after_distributing_table('{table}')")
            changed = True
        colocate = TABLES[0]
    return changed


def undistribute(rows: Rows) -> None:
    """Make sqlstore's distributed tables local to the coordinator again (a downgrade)."""
    done = distributed_tables(rows)
    for table in reversed(TABLES):
        if table in done:
            rows(f"SELECT undistribute_table('{table}', cascade_via_foreign_keys => false)")


def layout(rows: Rows) -> Layout:
    """The tables' layout on the cluster."""
    done = distributed_tables(rows)
    if done != set(TABLES):
        return Layout(distributed=False, colocated=False, shards=0)
    names = ", ".join(f"'{table}'" for table in TABLES)
    groups = rows(
        "SELECT count(DISTINCT colocationid) FROM pg_dist_partition"
        f" WHERE logicalrelid::regclass::text IN ({names})"
    )
    placed = rows(
        "SELECT n.nodename || ':' || n.nodeport, count(*) FROM pg_dist_shard s"
        " JOIN pg_dist_placement p ON p.shardid = s.shardid"
        " JOIN pg_dist_node n ON n.groupid = p.groupid"
        f" WHERE s.logicalrelid = '{TABLES[0]}'::regclass"
        " GROUP BY 1 ORDER BY 1"
    )
    workers = {str(node): int(count) for node, count in placed}
    return Layout(
        distributed=True,
        colocated=groups[0][0] == 1,
        shards=sum(workers.values()),
        workers=workers,
    )


def _keys_lead_with_namespace(rows: Rows) -> bool:
    found = rows(
        "SELECT 1 FROM pg_index i JOIN pg_attribute a"
        " ON a.attrelid = i.indrelid AND a.attnum = i.indkey[0]"
        f" WHERE i.indrelid = to_regclass('{TABLES[0]}') AND i.indisprimary"
        f" AND a.attname = '{DISTRIBUTION_COLUMN}'"
    )
    return bool(found) and bool(rows(f"SELECT to_regclass('{TABLES[1]}') IS NOT NULL")[0][0])
