"""Alembic environment: runs migrations on the URL given in the config.

Unlike Alembic's template it does not call logging.config.fileConfig, which
would disable the loggers of the process that runs the upgrade.
"""

from __future__ import annotations

from alembic import context

import qrfarm.models  # noqa: F401  - registers every table on Base.metadata
from qrfarm.models.base import Base
from qrfarm.models.session import make_engine

url = context.config.get_main_option("sqlalchemy.url")
assert url is not None
engine = make_engine(url)
with engine.connect() as connection:
    context.configure(
        connection=connection,
        target_metadata=Base.metadata,
        render_as_batch=connection.dialect.name == "sqlite",
        compare_type=True,
    )
    with context.begin_transaction():
        context.run_migrations()
engine.dispose()
