"""Detectors: decoded frames -> model backend -> tracker -> rules -> incident candidates.

Owns the model backends (``backends/``), the rules (``person_down``) and the worker
that runs them per camera off the event loop.
"""
