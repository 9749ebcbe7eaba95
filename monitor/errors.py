"""The monitor's exceptions: one root, one child per area.

Adapters catch their library's exception and raise one of these ``from`` it, so a user sees one
clear line and the log keeps the traceback.
"""


class MonitorError(Exception):
    """Anything the monitor reports to a user as a one-line error.

    ``transient`` says the failure is the service's, not the data's (unreachable, restarting, a
    serialisation conflict): the same request may succeed if it is tried again later. The stream
    waits such failures out instead of dead-lettering the records (``monitor.faults``).
    """

    def __init__(self, *args: object, transient: bool = False) -> None:
        super().__init__(*args)
        self.transient = transient


class ConfigError(MonitorError):
    """A setting is missing, malformed or inconsistent."""


class ServiceError(MonitorError):
    """A local service (Kafka, PostgreSQL) could not be resolved, started, stopped or reached."""


class BrokerError(MonitorError):
    """The Kafka broker refused or failed a request."""


class PartlySent(BrokerError):
    """The broker acknowledged the first ``done`` records of a batch (``counts`` of them by kind), not the rest."""

    def __init__(self, message: str, *, done: int, counts: dict[str, int]) -> None:
        super().__init__(message, transient=True)
        self.done, self.counts = done, counts


class StorageError(MonitorError):
    """The database refused or failed a request, or its schema is not at the expected revision."""


class DataError(MonitorError):
    """A data file or a task definition is unreadable or malformed (the message names file and line)."""


class ModelError(MonitorError):
    """A model folder, model card or GGUF file is missing, unreadable or inconsistent."""
