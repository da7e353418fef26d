"""GPUs: detection and pools (devices), host-wide leases (locks), the order models take them
(scheduling)."""
