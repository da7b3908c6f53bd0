"""`bastion keygen/sign/verify` (being written)."""
def keygen() -> None:
    """Write a signing key pair."""
def sign() -> None:
    """Sign a model file or directory."""
def verify() -> None:
    """Verify a model's signature."""
