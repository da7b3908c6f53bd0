"""`bastion audit` (being written)."""
def audit() -> None:
    """Audit a model."""
