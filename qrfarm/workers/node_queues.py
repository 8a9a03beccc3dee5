"""A worker that serves every node follows the nodes as they are registered.

Nodes are added at any time (the API, `qrfarm node add`); a worker started
without ``--node`` consumes each new node's queue within a few seconds,
without a restart. A consumer bootstep, so that queues are added on the
consumer's own loop.
"""

from __future__ import annotations

import logging
from typing import Any

from celery import bootsteps
from sqlalchemy import select
from sqlalchemy.exc import SQLAlchemyError

from qrfarm.config import Settings
from qrfarm.jobs.dispatch import node_queue
from qrfarm.models import NodeRecord, make_engine, session_factory

log = logging.getLogger(__name__)
REFRESH_S = 5.0


class FollowNodes(bootsteps.StartStopStep):  # type: ignore[misc]
    requires = ("celery.worker.consumer.tasks:Tasks",)

    def __init__(self, parent: Any, **kwargs: Any) -> None:
        super().__init__(parent, **kwargs)
        settings: Settings = parent.app.qrfarm_settings
        self.engine = make_engine(settings.database_url)
        self.sessions = session_factory(self.engine)
        self.timer: Any = None

    def start(self, consumer: Any) -> None:
        self.refresh(consumer)
        self.timer = consumer.timer.call_repeatedly(REFRESH_S, self.refresh, (consumer,))

    def stop(self, consumer: Any) -> None:
        if self.timer is not None:
            self.timer.cancel()
            self.timer = None

    def shutdown(self, consumer: Any) -> None:
        self.engine.dispose()

    def refresh(self, consumer: Any) -> None:
        try:
            with self.sessions() as session:
                names = list(session.scalars(select(NodeRecord.name)))
        except SQLAlchemyError as exc:
            log.warning("node list not read (trying again in %.0f s): %s", REFRESH_S, exc)
            return
        for name in names:
            queue = node_queue(name)
            if not consumer.task_consumer.consuming_from(queue):
                consumer.add_task_queue(queue)
