"""`appliance provision ...` commands (to be filled by the provision stage)."""


def register(sub) -> None:
    """Adds the `provision` command group to the top-level parser."""
