"""The DogSchool application of the eventsourcing tutorial, made async.

Dogs are registered and taught tricks; a projection counts both into a view,
and an event-sourced projection counts them into counter aggregates.
Run ``python -m examples.dogschool`` (see ``--help``).
"""
