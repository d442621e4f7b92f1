"""The live fleet board: a local web page for a fleet of 5,000 to 50,000 workspaces.

The board's domain pieces live here; its web routes are `gateway/board.py` (served
alone by `molecule-registry board`, or mounted by the gateway at `/board`). They serve
the page (static files in `static/`, no build step, relative URLs), the fleet
in gzipped pages, problems first (`snapshot.py`; a load's later pages are slices
of one ordered read, `ordered.py`), and the events as server-sent
events: status changes from the stream through a `registry.events.subscriber.Subscriber`
(resumable by position), heartbeats from the pub/sub channel, coalesced (`beats.py`).
Every request must name the board's own address in its Host header (`hosts.py`).
The page paints the first page at once and applies events from its position on,
so it is right even when opened late.
"""
