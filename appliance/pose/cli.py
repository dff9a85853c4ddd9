"""`appliance models ...` (being written)."""


def register(sub) -> None:
    """Adds the `models` command group."""
