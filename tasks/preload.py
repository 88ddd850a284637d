"""Imported by each Dask worker as it starts (`dask worker --preload tasks.preload`, as
`vodflow up` starts them), so that the first tasks of the first video do not pay for it.

A worker imports a task's module when it unpickles its first task: about 3 s on two busy
cores, holding the GIL (the worker logs "Event loop was unresponsive"). That lands on the
critical path of the first video after a start, right between the upload and its first frame.
Workers started without the preload work the same, only their first task is slower."""

from prefect import task_engine  # noqa: F401 - the engine every task runs in

from tasks import audio, encode, lane, split, thumbnails, validate  # noqa: F401
