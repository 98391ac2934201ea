"""User-facing errors: the CLI prints their message on one line, never a traceback."""

from __future__ import annotations


class FedpruneError(Exception):
    """Something the user can fix: the message says what is wrong and what to do."""


class PluginError(FedpruneError):
    """A plugin registered something invalid (a duplicate name, a bad record)."""


class DataError(FedpruneError):
    """A dataset is missing, corrupt or laid out wrongly."""


class Diverged(FedpruneError):
    """Training produced a non-finite loss or weight; the run stops and says in which round."""

    def __init__(self, message: str, round: int | None = None) -> None:
        super().__init__(message)
        self.round = round


class UsageError(FedpruneError):
    """The command line asks for something impossible (a bad value, an unusable output
    directory): the CLI exits 2, as for any usage error."""
