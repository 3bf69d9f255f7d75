"""A private Mosquitto broker for tests (the product's own, `controller.telemetry`):
loopback only, a free port, persistence in a temporary directory, stop / SIGKILL /
restart on the same port. Never the machine's shared broker on 1883."""

from controller.telemetry import MosquittoBroker, free_loopback_port

__all__ = ["MosquittoBroker", "free_loopback_port"]
