"""Imported once by the fork server, so forked children start with everything loaded."""

from __future__ import annotations

import openhands.sdk  # noqa: F401  (the slow import, quiet: see bench/__init__)
import psycopg  # noqa: F401
import pymysql  # noqa: F401
from openhands.sdk.conversation.event_store import EventLog  # noqa: F401

import sqlstore  # noqa: F401
from bench import logging_check, sdk_workloads  # noqa: F401
