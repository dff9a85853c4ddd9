"""User-facing errors: the CLI prints their message on one line and exits non-zero.

Raise a subclass of :class:`ApplianceError` for anything a technician, operator or officer
can fix (bad input, missing file, wrong key); let programming errors propagate as usual.
"""


class ApplianceError(Exception):
    """An error whose message is meant for the person at the command line."""

    exit_code = 1


class InputError(ApplianceError):
    """Unreadable or invalid input (video, file, request, bundle)."""

    exit_code = 2


class ModelError(ApplianceError):
    """A model file is missing, unlisted, or differs from its manifest entry."""

    exit_code = 3
