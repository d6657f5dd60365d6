"""Serve the dog school with uvicorn: ``python -m examples.fastapi_dogschool``.

    python -m examples.fastapi_dogschool [--host HOST] [--port PORT]

Configured from the environment, as
:func:`~examples.fastapi_dogschool.app.create_app` describes.
Without uvicorn installed, prints how to install it and exits with status 1.
"""

from __future__ import annotations

import argparse
import importlib
import sys
from collections.abc import Sequence

from examples.fastapi_dogschool.app import create_app

INSTALL_HINT = """\
uvicorn is not installed. Install it and run again:

    pip install uvicorn
    python -m examples.fastapi_dogschool

or serve the app with any ASGI server, e.g.:

    uvicorn --factory examples.fastapi_dogschool.app:create_app
"""


def parse_args(argv: Sequence[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(prog="python -m examples.fastapi_dogschool")
    parser.add_argument("--host", default="127.0.0.1", help="default: 127.0.0.1")
    parser.add_argument("--port", type=int, default=8000, help="default: 8000")
    return parser.parse_args(argv)


def main(argv: Sequence[str] | None = None) -> int:
    """Serve the app until interrupted; 1 if uvicorn is missing."""
    args = parse_args(argv)
    try:
        uvicorn = importlib.import_module("uvicorn")
    except ModuleNotFoundError:
        print(INSTALL_HINT, file=sys.stderr, end="")
        return 1
    uvicorn.run(create_app(), host=args.host, port=args.port)
    return 0


if __name__ == "__main__":
    sys.exit(main())
