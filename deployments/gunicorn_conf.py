"""gunicorn settings without a command-line flag; `vodflow web` loads this module with
`-c python:deployments.gunicorn_conf`.

No request header makes a request https in gunicorn's eyes: X-Forwarded-* are ProxyFix's to
believe (VODFLOW_TRUSTED_PROXIES, and the one nginx hop of `vodflow up`). `--forwarded-allow-ips`
cannot say this alone: gunicorn believes these headers from any peer on a unix socket, which is
how nginx reaches it, and so from whatever a client sent through nginx."""

secure_scheme_headers: dict[str, str] = {}
