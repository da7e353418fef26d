"""Shared by generators under scripts/ (MAD keeps helpers such as jax_host_device.py here)."""

DEFAULT_TAGS = ["zoo", "generated"]


def host_devices(n):
    return [f"dev{i}" for i in range(n)]
