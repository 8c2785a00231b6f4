"""`finegrain keys create | list | revoke`: the API keys clients send as `Authorization: Bearer <key>`.

A key is shown once, by `create`; MongoDB keeps only a salted HMAC of its secret (`finegrain.apikeys`).
Revoking bumps a ZooKeeper znode every API worker watches, so the key stops working within about a
second (within the workers' cache TTL, 10 s by default, if ZooKeeper is unreachable).
"""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager
from typing import Annotated

import typer

from cli.options import JsonOption
from finegrain.apikeys import ApiKeyError, KeyStore, Scope
from finegrain.console import console, fail, print_json_line, summary_table
from finegrain.settings import get_settings

app = typer.Typer(help="API keys: create (shown once), list, revoke.", no_args_is_help=True)

COLUMNS = ["key id", "name", "scopes", "rate/s per worker", "created", "revoked"]


@contextmanager
def _store() -> Iterator[KeyStore]:
    try:
        with KeyStore(get_settings()) as store:
            yield store
    except ApiKeyError as exc:
        raise fail(str(exc)) from None
    except typer.Exit:
        raise
    except Exception as exc:  # MongoDB down or refusing: one line, not a traceback
        raise fail(f"{type(exc).__name__}: {exc} (is the local stack up? `finegrain stack status`)") from None


@app.command()
def create(
    name: Annotated[str, typer.Option(help="Who or what uses the key (e.g. shop-frontend).",
                                      show_default=False)],
    scope: Annotated[list[str], typer.Option(
        help=f"A scope the key grants; repeat for several: {', '.join(Scope)}.", show_default=False)],
    rate: Annotated[float | None, typer.Option(
        help="Requests per second the key may make on each API worker (default: the serving config's "
        "auth.rate_per_s).", show_default=False)] = None,
    replace: Annotated[bool, typer.Option(
        help="First revoke the active keys of the same name (e.g. the demo's key of a previous run).")
    ] = False,
    as_json: JsonOption = False,
) -> None:
    """Create a key and print it once: store it where the client reads it (e.g. FINEGRAIN_API_KEY)."""
    with _store() as store:
        key, token, revoked = store.create(name, scope, rate_per_s=rate, replace=replace)
    for old in revoked:
        console.print(f"revoked {old.key.key_id} (the previous key named {name})", highlight=False)
    console.print(summary_table("API key created", [_row(key.to_json())], COLUMNS))
    console.print(f"key (shown once, not stored): [bold]{token}[/]", highlight=False, soft_wrap=True)
    console.print("send it as: Authorization: Bearer <key>; the CLI sends FINEGRAIN_API_KEY", highlight=False)
    if as_json:
        print_json_line({**key.to_json(), "key": token})


@app.command("list")
def list_keys(
    revoked: Annotated[bool, typer.Option("--all", help="Also list revoked keys.")] = False,
    as_json: JsonOption = False,
) -> None:
    """The keys (never their secrets): id, name, scopes, rate, when created and revoked."""
    with _store() as store:
        keys = [key.to_json() for key in store.list(include_revoked=revoked)]
    console.print(summary_table(f"API keys ({len(keys)})", [_row(k) for k in keys], COLUMNS))
    if as_json:
        print_json_line({"keys": keys})


@app.command()
def revoke(
    key_ids: Annotated[list[str], typer.Argument(help="Key ids (the part after fg_, as `finegrain keys list` "
                                                 "shows them).", show_default=False)],
    as_json: JsonOption = False,
) -> None:
    """Revoke keys: every API worker refuses them within about a second."""
    done = []
    with _store() as store:
        for key_id in key_ids:
            result = store.revoke(key_id.removeprefix("fg_").split("_", 1)[0])
            done.append(result)
            if not result.announced:
                console.print(f"[yellow]ZooKeeper unreachable:[/] workers refuse {result.key.key_id} within "
                              "their cache TTL instead", highlight=False)
    console.print(summary_table("Revoked", [_row(r.key.to_json()) for r in done], COLUMNS))
    if as_json:
        print_json_line({"revoked": [r.key.key_id for r in done],
                         "announced": all(r.announced for r in done)})


def _row(key: dict[str, object]) -> tuple[object, ...]:
    scopes = key["scopes"]
    assert isinstance(scopes, list)
    rate = key["rate_per_s"]
    shown = f"{rate:g}" if isinstance(rate, float) else "default"
    return key["key_id"], key["name"], ", ".join(scopes), shown, key["created_at"], key["revoked_at"] or "-"
