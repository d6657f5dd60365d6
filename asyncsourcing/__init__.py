"""asyncsourcing: asyncio-native event sourcing.

Applications record domain events; projections follow an application's
sequence into materialised views; ``await view.wait(app_name, position)``
returns once a view has processed a position. The submodules hold the
layers (``domain``, ``persistence``, ``application``, ``projection``) and the
backends (``popo``, ``sqlite``, ``postgres``); the names most programs need
are re-exported here.
"""

from importlib.metadata import PackageNotFoundError, version

from asyncsourcing.application import AggregateNotFoundError, Application
from asyncsourcing.domain import Aggregate, DomainEvent, event
from asyncsourcing.persistence import (
    InfrastructureFactory,
    IntegrityError,
    Tracking,
    TrackingRecorder,
    WaitInterruptedError,
)
from asyncsourcing.projection import (
    EventSourcedProjection,
    EventSourcedProjectionRunner,
    Projection,
    ProjectionRunner,
    ProjectionStoppedError,
)
from asyncsourcing.utils import Environment, get_topic

try:
    __version__ = version("asyncsourcing")
except PackageNotFoundError:  # pragma: no cover (running from a source tree)
    __version__ = "0+unknown"

__all__ = [
    "Aggregate",
    "AggregateNotFoundError",
    "Application",
    "DomainEvent",
    "Environment",
    "EventSourcedProjection",
    "EventSourcedProjectionRunner",
    "InfrastructureFactory",
    "IntegrityError",
    "Projection",
    "ProjectionRunner",
    "ProjectionStoppedError",
    "Tracking",
    "TrackingRecorder",
    "WaitInterruptedError",
    "__version__",
    "event",
    "get_topic",
]
