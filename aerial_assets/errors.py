"""One base exception for every error a user can hit.

Each message says what was wrong *and* how to fix it, so that a failed run in the Dagster UI is
actionable without reading the source.
"""

from __future__ import annotations

from aerial_assets.safety.redaction import redact


class AerialError(Exception):
    """Base class of every error raised by aerial_assets on bad input or bad configuration.

    The message is redacted when the error is made (:func:`aerial_assets.safety.redaction.redact`): it names settings
    and URIs, and whatever prints it (the terminal, Dagster's event log, the UI) must never see a SAS token or an
    account key that came in with them."""

    def __init__(self, *args: object) -> None:
        super().__init__(*(redact(a) if isinstance(a, str) else a for a in args))


class TrainingDataError(AerialError):
    """The labelled training folder is missing, empty or unusable."""


class ConfigurationError(AerialError):
    """A setting (environment variable, config field, partition name) has an invalid value."""


class BackboneError(AerialError):
    """A backbone cannot be built (missing weights, unknown name, failed verification)."""


class CountyError(AerialError):
    """A county's registration or imagery is unusable."""


class StorageError(AerialError):
    """A storage URI cannot be read or written."""
