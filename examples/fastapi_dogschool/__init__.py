"""The dog school as a FastAPI service, with read-your-writes queries.

Command endpoints return the position of the event they recorded, in their
body and in the ``X-Position`` response header; the query endpoint that
reads the counters view accepts it back (the same header, or
``?after=<position>``) and waits until the view has processed it before
reading. The projection runner runs for the lifetime of the app (its
lifespan), or, with ``RUN_PROJECTION=no``, in a process of its own while the
app only opens the view. Under several workers (``uvicorn --workers N``)
each runs a runner: one leads, the others stand by, and ``GET /status``
tells which worker answered and its runner's role. Run it with
``python -m examples.fastapi_dogschool`` (needs ``uvicorn``); see
:func:`examples.fastapi_dogschool.app.create_app`.
"""
