"""Run moto's S3 server application with one request at a time.

`moto_server` serves requests on many threads, and its conditional PUT checks the ETag and
then writes without a lock, so two concurrent If-Match writers can both win: the
conformance probe rightly rejects it. Handling one request at a time makes every
conditional write atomic, which is what a real S3 guarantees. Usage:
`python -m tests.moto_serial PORT`.
"""

from __future__ import annotations

import sys

from moto.moto_server.werkzeug_app import (
    DomainDispatcherApplication,
    MotoRequestHandler,
    create_backend_app,
)
from werkzeug.serving import run_simple


def main() -> None:
    port = int(sys.argv[1])
    app = DomainDispatcherApplication(create_backend_app)
    run_simple(
        "127.0.0.1", port, app, threaded=False, request_handler=MotoRequestHandler
    )


if __name__ == "__main__":
    main()
