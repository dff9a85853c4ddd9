"""`appliance analyze|eval|run`: the pixel pipeline's commands (being written)."""


def register(sub) -> None:
    """Adds analyze, eval and run."""
