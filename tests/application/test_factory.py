"""Choosing a backend from the environment, and the errors when it can't be done."""

from __future__ import annotations

import pytest

from asyncsourcing.persistence import InfrastructureFactory, InfrastructureFactoryError
from asyncsourcing.popo import POPOFactory, POPOTrackingRecorder
from asyncsourcing.utils import Environment


def test_default_backend_is_in_memory() -> None:
    assert type(InfrastructureFactory.construct()) is POPOFactory
    assert type(InfrastructureFactory.construct({})) is POPOFactory


def test_module_or_class_topic() -> None:
    for topic in ("asyncsourcing.popo", "asyncsourcing.popo:POPOFactory"):
        factory = InfrastructureFactory.construct({"PERSISTENCE_MODULE": topic})
        assert type(factory) is POPOFactory


def test_prefixed_variable_wins() -> None:
    env = Environment(
        "myview",
        {
            "MYVIEW_PERSISTENCE_MODULE": "asyncsourcing.popo",
            "PERSISTENCE_MODULE": "x.y",
        },
    )
    assert type(InfrastructureFactory.construct(env)) is POPOFactory


def test_unknown_module_is_named() -> None:
    with pytest.raises(
        InfrastructureFactoryError, match=r"'no\.such\.module'.*PERSISTENCE_MODULE"
    ):
        InfrastructureFactory.construct({"PERSISTENCE_MODULE": "no.such.module"})


def test_module_without_factory_is_named() -> None:
    with pytest.raises(
        InfrastructureFactoryError, match=r"'json'.*0 infrastructure factory"
    ):
        InfrastructureFactory.construct({"PERSISTENCE_MODULE": "json"})


def test_topic_of_something_else_is_refused() -> None:
    with pytest.raises(InfrastructureFactoryError, match="neither"):
        InfrastructureFactory.construct({"PERSISTENCE_MODULE": "json:dumps"})


async def test_tracking_recorder_class_from_topic_must_fit_the_backend() -> None:
    factory = POPOFactory({"TRACKING_RECORDER_TOPIC": "json:JSONDecoder"})
    with pytest.raises(InfrastructureFactoryError, match="TRACKING_RECORDER_TOPIC"):
        await factory.tracking_recorder()
    assert type(await POPOFactory().tracking_recorder()) is POPOTrackingRecorder


def test_transcoder_cipher_and_compressor_settings_are_eventsourcings() -> None:
    factory = POPOFactory({"COMPRESSOR_TOPIC": "zlib", "CIPHER_KEY": ""})
    mapper = factory.mapper()
    assert mapper.compressor is not None
    assert mapper.cipher is None
