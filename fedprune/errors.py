"""User-facing errors: the CLI prints their message on one line, never a traceback."""

from __future__ import annotations


class FedpruneError(Exception):
    """Something the user can fix: the message says what is wrong and what to do."""


class PluginError(FedpruneError):
    """A plugin registered something invalid (a duplicate name, a bad record)."""


class DataError(FedpruneError):
    """A dataset is missing, corrupt or laid out wrongly."""
