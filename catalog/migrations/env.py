"""Alembic environment: runs on the connection `catalog.db.migrate()` hands over.

Migrations are applied by the application itself (`catalog.db.get_engine()` migrates before the
first use, one process at a time); vodflow ships no alembic.ini for the alembic command line.
"""

from alembic import context

from catalog.models import Base

connection = context.config.attributes.get("connection")
if connection is None:
    raise RuntimeError("vodflow applies its migrations itself: call catalog.db.migrate() "
                       "(any vodflow command or the web app does it at start-up)")
context.configure(connection=connection, target_metadata=Base.metadata, render_as_batch=True)
context.run_migrations()
