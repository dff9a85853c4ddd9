"""`appliance uplink ...` commands (to be filled by the uplink stage)."""


def register(sub) -> None:
    """Adds the `uplink` command group to the top-level parser."""
