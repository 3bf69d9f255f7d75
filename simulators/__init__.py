"""Hardware simulators. `simulators.mn1` is a complete MN-1 device."""
