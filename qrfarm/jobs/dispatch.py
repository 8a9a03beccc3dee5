"""Handing work to the queue: a task sent by its name, never by importing task code."""

from __future__ import annotations

from typing import Any, Protocol

RUN_JOB = "qrfarm.run_job"


def node_queue(node_name: str) -> str:
    """The queue of a node: workers serve the nodes whose queues they consume."""
    return f"qrfarm.node.{node_name}"


class Dispatcher(Protocol):
    def send(self, task: str, args: list[Any], queue: str) -> None: ...


class CeleryDispatcher:
    """Sends tasks by name through a Celery app configured for the broker only."""

    def __init__(self, app: Any) -> None:
        self.app = app

    def send(self, task: str, args: list[Any], queue: str) -> None:
        self.app.send_task(task, args=args, queue=queue)


def celery_dispatcher(broker: str, transport_options: dict[str, Any]) -> CeleryDispatcher:
    """A dispatcher for producers: a Celery app that only sends, by task name."""
    from celery import Celery

    app = Celery("qrfarm-producer", broker=broker, set_as_current=False)
    app.conf.update(
        broker_transport_options=transport_options,
        task_serializer="json",
        accept_content=["json"],
        broker_connection_retry_on_startup=True,
    )
    return CeleryDispatcher(app)
