"""Device drivers. `drivers.mn1` speaks the MN-1 serial ICD."""
