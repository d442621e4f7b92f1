"""`molecule-registry board`: serve the live fleet board on this machine."""

from __future__ import annotations

import ipaddress

import click

from cli.base import friendly_errors, main, reachable_stores


def _is_loopback(host: str) -> bool:
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False


@main.command("board")
@click.option("--host", default="127.0.0.1", show_default=True, help="Address to listen on.")
@click.option(
    "--port", type=click.IntRange(0, 65535), default=8765, show_default=True, help="0: any free."
)
@click.option(
    "--allow-host",
    "allowed_hosts",
    multiple=True,
    metavar="NAME",
    help="Another Host name the board answers to (a DNS name in front of it); repeatable. "
    "Requests naming any other host are refused (DNS-rebinding defence).",
)
@click.option(
    "--max-streams",
    type=click.IntRange(1),
    default=None,
    help="Event streams (open pages) served at once; more are refused with 503 "
    "(each holds a worker thread and ~2 Redis connections). Default: 200.",
)
@friendly_errors
def board(host: str, port: int, allowed_hosts: tuple[str, ...], max_streams: int | None) -> None:
    """Serve the live fleet board: problems first, a map of the whole fleet, live.

    The page loads the fleet from PostgreSQL (in pages, problems first), then follows
    the event stream. It answers only requests naming its own address (or an
    --allow-host name). It has no authentication: keep it on localhost (or behind an
    authenticating proxy).
    """
    # The web stack is an application layer over registry/: imported here only.
    from gateway.board_events import DEFAULT_MAX_STREAMS
    from gateway.board_serve import BoardServer

    engine, client = reachable_stores()
    try:
        server = BoardServer(
            host,
            port,
            engine,
            client,
            allowed_hosts,
            max_streams=max_streams or DEFAULT_MAX_STREAMS,
        )
    except OSError as exc:
        raise click.ClickException(f"cannot listen on {host}:{port}: {exc.strerror}") from None
    if not _is_loopback(host):
        click.echo(
            f"warning: {host} is not a loopback address and the board has no "
            "authentication: anyone who can reach it sees the fleet",
            err=True,
        )
    click.echo(f"fleet board on {server.url} (Ctrl-C to stop)")
    try:
        server.serve_forever()  # until SIGINT/SIGTERM: streams end, then the server
    except KeyboardInterrupt:
        pass
    finally:
        server.stop()
