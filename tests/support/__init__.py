"""Shared test support: a private Mosquitto broker and pytest fixtures."""
