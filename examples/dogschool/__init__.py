"""The DogSchool application of the eventsourcing tutorial, made async.

Dogs are registered and taught tricks; a projection counts both into a view,
an event-sourced projection counts them into counter aggregates, and a bulk
projection keeps a row per dog, updated once per catch-up batch.
Run ``python -m examples.dogschool`` (see ``--help``).
"""
