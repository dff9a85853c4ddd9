"""`appliance station ...` commands (to be filled by the station stage)."""


def register(sub) -> None:
    """Adds the `station` command group to the top-level parser."""
