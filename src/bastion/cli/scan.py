"""`bastion scan` (being written)."""
def scan() -> None:
    """Scan model files for code before loading them."""
