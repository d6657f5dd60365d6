"""The dog school as a FastAPI service, with read-your-writes queries.

Command endpoints return the position of the event they recorded; query
endpoints that read the counters view accept it (``?after=<position>``) and
wait until the view has processed it before reading. The projection runner
runs for the lifetime of the app (its lifespan). Run it with
``python -m examples.fastapi_dogschool`` (needs ``uvicorn``); see
:func:`examples.fastapi_dogschool.app.create_app`.
"""
