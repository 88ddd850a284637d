"""Uploads below HTTP: the bytes of uploads in progress (`store`), their catalog sessions and
hand-off to the pipeline (`sessions`), and housekeeping (`cleanup`). The web app's tus and
one-shot endpoints (`streaming_app.uploads`), the maintenance flow and the CLI all use them,
so they live here, under the flows, and know nothing of Flask."""
