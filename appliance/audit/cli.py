"""`appliance audit ...` commands (to be filled by the audit stage)."""


def register(sub) -> None:
    """Adds the `audit` command group to the top-level parser."""
