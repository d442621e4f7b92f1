"""The live fleet board: a small local web page showing every workspace's status.

`server.py` serves the page (static files in `static/`, no build step), a snapshot
of the fleet read from PostgreSQL, and the event stream as server-sent events fed
by a `registry.events.subscriber.Subscriber`; the page applies events from the snapshot's
position on, so it is right even when opened late.
"""
