"""`finegrain replay`: the data's purchases (and synthetic browsing around them) posted to the running
API in time order, for demos, benchmarks and tests of the real-time half."""

from __future__ import annotations

from typing import Annotated

import typer

from cli.options import EventsOption, JsonOption
from finegrain.apikeys import bearer_headers
from finegrain.console import console, fail, print_json_line, summary_table
from finegrain.data.replay import Replayer, ReplaySummary, replay_events, summarise
from finegrain.dates import parse_as_of
from finegrain.errors import FinegrainError
from finegrain.settings import get_settings


def replay(
    start: Annotated[str, typer.Option("--from", help="First day replayed (YYYY-MM-DD, midnight UTC).",
                                       show_default=False)],
    end: Annotated[str, typer.Option("--to", help="Day the replay stops before (YYYY-MM-DD).",
                                     show_default=False)],
    speed: Annotated[float, typer.Option(help="Times real time: 60 posts an hour of the data in a minute; 0 "
                                         "posts as fast as the API takes them.")] = 60.0,
    events: EventsOption = None,
    synthetic: Annotated[bool, typer.Option(help="Add synthetic views and clicks before each purchase.")
                         ] = True,
    url: Annotated[str | None, typer.Option(help="API base URL (default: http://FINEGRAIN_API_BIND).",
                                            show_default=False)] = None,
    as_json: JsonOption = False,
) -> None:
    """Post the purchases of [--from, --to) to the API's /v1/events in time order."""
    from finegrain.data.retail import read_events

    settings = get_settings()
    try:
        first, last = parse_as_of(start, "--from"), parse_as_of(end, "--to")
        path = events if events is not None else settings.events_path
        if not path.exists():
            raise FinegrainError(f"no events at {path}: run `finegrain data load` (or pass --events PATH)")
        planned = replay_events(read_events(path), first, last, synthetic=synthetic)
        summary = summarise(planned, first, last)
        replayer = Replayer(url or f"http://{settings.api_bind}", speed=speed,
                            headers=bearer_headers(settings))
        console.print(f"replaying {summary.purchases:,} purchases and {summary.synthetic:,} synthetic events "
                      f"of {summary.users:,} users at {speed:g}x", highlight=False)
        try:
            with console.status("posting ...") as status:
                def progress(done: ReplaySummary) -> None:
                    status.update(f"posted {done.posted:,} of {len(planned):,} events")

                replayer.post(planned, summary, progress)
        finally:
            replayer.close()
    except FinegrainError as exc:
        raise fail(str(exc)) from None
    figures = summary.as_dict()
    console.print(summary_table("Replay", [(k, v) for k, v in figures.items()], ["", "value"]))
    if as_json:
        print_json_line(figures)
