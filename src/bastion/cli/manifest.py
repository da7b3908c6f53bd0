"""`bastion manifest` (being written)."""
def manifest() -> None:
    """Record or check dataset digests."""
