"""Hub: incidents (dedup, severity, routing, state machine, timeline), the store, the
bus, authentication, and the HTTP/WebSocket API. It receives everything from ingest
and detectors as typed bus messages and never imports their internals (except the
composition root, ``hub.cli``)."""
