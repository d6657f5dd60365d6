"""Topics and environments, reused from :mod:`eventsourcing.utils`."""

from eventsourcing.utils import (
    Environment,
    EnvType,
    TopicError,
    get_topic,
    register_topic,
    resolve_topic,
    strtobool,
)

__all__ = [
    "EnvType",
    "Environment",
    "TopicError",
    "get_topic",
    "register_topic",
    "resolve_topic",
    "strtobool",
]
