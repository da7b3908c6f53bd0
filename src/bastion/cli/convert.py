"""`bastion convert` (being written)."""
def convert() -> None:
    """Convert a pickle checkpoint to safetensors."""
