from tests.support.fixtures import mosquitto_broker

__all__ = ["mosquitto_broker"]
