"""``monitor privacy``: honour a deletion request that did not come from the platform's own stream."""

from __future__ import annotations

from datetime import UTC, datetime

import typer
from rich.console import Console

from monitor.cli.context import settings_of
from monitor.errors import ConfigError

app = typer.Typer(help="Personal data: erase a post or an author's posts on request.", no_args_is_help=True)
console = Console()


@app.command()
def erase(
    ctx: typer.Context,
    source: str = typer.Option(..., "--source", help="Where the posts came from (bluesky, mastodon, a data set)"),
    author: str | None = typer.Option(None, "--author", help="Every post of this author: the handle or id the "
                                      "source gave (a Bluesky DID, a Mastodon user@instance)"),
    post: str | None = typer.Option(None, "--post", help="One post, by the source's id (an at:// URI, HOST/ID)"),
) -> None:
    """Delete a post, or every post of an author, with its predictions, explanations, signals and alert
    excerpts, and keep a tombstone so that the monitor never stores it again (a post still in the stream,
    a replay). The author is matched through the same keyed hash that storage keeps."""
    from monitor.privacy import load_author_key
    from monitor.records import MAX_AUTHOR_CHARS, Erasure
    from monitor.sources.mastodon import author_name
    from monitor.runtime import open_database
    from monitor.storage.erasures import erase as apply
    from monitor.storage.session import transaction

    if (author is None) == (post is None):
        raise ConfigError("give either --author or --post")
    settings = settings_of(ctx)
    if source == "mastodon" and author and len(author) > MAX_AUTHOR_CHARS:
        author = author_name(author, "")  # the source stored this long user@instance as its hash
    try:
        request = Erasure(source=source, author=author, post_id=post, origin="request", time=datetime.now(UTC))
    except ValueError as exc:
        raise ConfigError(f"cannot erase that: {str(exc).splitlines()[-1].strip()}") from exc
    key = settings.privacy.author_key
    author_key = load_author_key(key.get_secret_value() if key else None, settings.data_dir / "author.key")
    factory = open_database(settings, "migrate")
    with transaction(factory) as session:
        done = apply(session, [request], author_key=author_key)
    what = f"author {author!r}" if author else f"post {post!r}"
    console.print(f"erased {what} on {source}: {done.posts} posts removed (with their predictions, explanations "
                  f"and signals), {done.alerts} alert excerpts cleared; a tombstone keeps them out from now on")
