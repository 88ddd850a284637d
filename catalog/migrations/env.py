"""Alembic environment: runs on the connection catalog.db hands over (or the settings URL)."""

from alembic import context

from catalog.models import Base

config = context.config
target_metadata = Base.metadata


def run() -> None:
    connection = config.attributes.get("connection")
    if connection is None:
        from catalog.db import make_engine
        from config.settings import get_settings

        engine = make_engine(get_settings().database_url)
        with engine.begin() as conn:
            context.configure(connection=conn, target_metadata=target_metadata, render_as_batch=True)
            context.run_migrations()
        return
    context.configure(connection=connection, target_metadata=target_metadata, render_as_batch=True)
    context.run_migrations()


run()
