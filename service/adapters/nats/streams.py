"""The JetStream streams and consumer of SPEC §5, created or brought up to date idempotently.

Run at every start-up and by `libjobs nats setup`: a missing stream is created, an existing one whose
settings differ is updated (subjects, limits), one that matches is left alone.
"""

from __future__ import annotations

from dataclasses import dataclass

from nats.js import JetStreamContext
from nats.js.api import (
    AckPolicy,
    ConsumerConfig,
    DeliverPolicy,
    DiscardPolicy,
    RetentionPolicy,
    StorageType,
    StreamConfig,
)
from nats.js.errors import NotFoundError

from contracts.nats import EVENTS_STREAM, EXECUTOR_DURABLE, RUNS_STREAM, Subjects

DAY_S = 86_400


@dataclass(frozen=True)
class StreamSettings:
    replicas: int = 1  # 3 on a JetStream cluster (deploy/)
    duplicate_window_s: float = 120  # a publish repeated within this window is dropped (Nats-Msg-Id)
    events_max_age_s: float = 30 * DAY_S  # the feed, not the record: the event store keeps everything
    run_ack_wait_s: float = 300  # a run not acked by then is redelivered (the executor sends progress)


def stream_configs(subjects: Subjects, settings: StreamSettings) -> list[StreamConfig]:
    common = {
        "storage": StorageType.FILE,
        "num_replicas": settings.replicas,
        "duplicate_window": settings.duplicate_window_s,
        "discard": DiscardPolicy.OLD,
    }
    return [
        StreamConfig(
            name=EVENTS_STREAM,
            subjects=list(subjects.events_stream_subjects),
            retention=RetentionPolicy.LIMITS,
            max_age=settings.events_max_age_s,
            **common,  # type: ignore[arg-type]
        ),
        StreamConfig(
            name=RUNS_STREAM,
            subjects=list(subjects.runs_stream_subjects),
            retention=RetentionPolicy.WORK_QUEUE,
            **common,  # type: ignore[arg-type]
        ),
    ]


def executor_consumer(subjects: Subjects, settings: StreamSettings) -> ConsumerConfig:
    return ConsumerConfig(
        durable_name=EXECUTOR_DURABLE,
        deliver_policy=DeliverPolicy.ALL,
        ack_policy=AckPolicy.EXPLICIT,
        ack_wait=settings.run_ack_wait_s,
        filter_subject=subjects.runs_stream_subjects[0],
        max_ack_pending=1000,
    )


async def ensure_streams(js: JetStreamContext, subjects: Subjects, settings: StreamSettings) -> list[str]:
    """Creates or updates the streams and the executor's consumer; returns what it did, for the CLI."""
    done: list[str] = []
    for config in stream_configs(subjects, settings):
        assert config.name is not None
        try:
            info = await js.stream_info(config.name)
        except NotFoundError:
            await js.add_stream(config)
            done.append(f"created stream {config.name}")
            continue
        if _differs(info.config, config):
            await js.update_stream(config)
            done.append(f"updated stream {config.name}")
        else:
            done.append(f"stream {config.name} is up to date")
    await js.add_consumer(RUNS_STREAM, executor_consumer(subjects, settings))  # idempotent when equal
    done.append(f"consumer {RUNS_STREAM}/{EXECUTOR_DURABLE} is in place")
    return done


def _differs(current: StreamConfig, wanted: StreamConfig) -> bool:
    keys = ("subjects", "retention", "max_age", "num_replicas", "duplicate_window", "storage", "discard")
    return any(_norm(getattr(current, key)) != _norm(getattr(wanted, key)) for key in keys)


def _norm(value: object) -> object:
    return sorted(value) if isinstance(value, list) else value
