"""``crirt ctl pull``, ``images``, ``inspecti``, ``rmi`` and ``imagefsinfo``: crictl's image verbs and output."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Annotated, Any

import typer

from crirt._gen.runtime.v1 import (
    AuthConfig,
    Image,
    ImageFilter,
    ImageFsInfoRequest,
    ImageSpec,
    ImageStatusRequest,
    ListContainersRequest,
    ListImagesRequest,
    PodSandboxConfig,
    PullImageRequest,
    RemoveImageRequest,
)
from crirt.api.convert import to_message
from crirt.ctl.app import app, call_images, call_runtime, human_size, print_table
from crirt.ctl.sandboxes import ConfigFileError, load_sandbox_config

NO_PULL_DEADLINE = 24 * 3600.0
"""crictl pulls without a deadline unless --pull-timeout is given; a day stands for that."""


def _fail(message: str) -> typer.Exit:
    typer.echo(f"crirt ctl: {message}", err=True)
    return typer.Exit(1)


def _short(text: str) -> str:
    return text.removeprefix("sha256:")[:13]


def _credentials(creds: str, auth: str, username: str, password: str) -> AuthConfig | None:
    if creds:
        if ":" not in creds:
            raise _fail("--creds needs USERNAME:PASSWORD")
        username, _, password = creds.partition(":")
    if not (username or password or auth):
        return None
    return AuthConfig(username=username, password=password, auth=auth)


@app.command()
def pull(
    ctx: typer.Context,
    image: Annotated[str, typer.Argument(help="image reference, e.g. busybox or quay.io/org/app:v1")],
    creds: Annotated[str, typer.Option("--creds", help="USERNAME:PASSWORD for the registry")] = "",
    auth: Annotated[str, typer.Option("--auth", help="base64 of USERNAME:PASSWORD")] = "",
    username: Annotated[str, typer.Option("--username", "-u", help="registry username")] = "",
    password: Annotated[str, typer.Option("--password", help="registry password")] = "",
    pod_config: Annotated[str, typer.Option("--pod-config", help="pod sandbox config (JSON or YAML) to pull for")] = "",
    annotation: Annotated[list[str] | None, typer.Option("--annotation", "-a", help="key=value, repeatable")] = None,
    pull_timeout: Annotated[float, typer.Option("--pull-timeout", help="seconds; 0 means no deadline")] = 0,
) -> None:
    """Pull an image and print its id."""
    annotations = {}
    for item in annotation or []:
        key, equals, value = item.partition("=")
        if not equals:
            raise _fail(f"--annotation {item!r}: expected key=value")
        annotations[key] = value
    sandbox = None
    if pod_config:
        try:
            sandbox = to_message(load_sandbox_config(Path(pod_config)), PodSandboxConfig)
        except ConfigFileError as exc:
            raise _fail(str(exc)) from None
    request = PullImageRequest(image=ImageSpec(image=image, annotations=annotations),
                               auth=_credentials(creds, auth, username, password), sandbox_config=sandbox)
    reply = call_images(ctx, lambda stub: stub.pull_image(request), timeout=pull_timeout or NO_PULL_DEADLINE)
    typer.echo(f"Image is up to date for {reply.image_ref}")


def _rows(image: Image, digests: bool, no_trunc: bool, pinned: bool) -> list[tuple[str, ...]]:
    name, repo_digest = image.repo_digests[0].split("@", 1) if image.repo_digests else ("<none>", "<none>")
    pairs = [tuple(tag.rsplit(":", 1)) if ":" in tag.rsplit("/", 1)[-1] else (tag, "<none>")
             for tag in image.repo_tags] or [(name, "<none>")]
    image_id = image.id if no_trunc else _short(image.id)
    shown_digest = repo_digest if no_trunc else _short(repo_digest)
    rows = []
    for repository, tag in pairs:
        row = [repository, tag, *([shown_digest] if digests else []), image_id, human_size(image.size)]
        rows.append((*row, *([str(image.pinned).lower()] if pinned else [])))
    return rows


def _verbose(image: Image) -> str:
    lines = [f"ID: {image.id}", *(f"RepoTags: {t}" for t in image.repo_tags),
             *(f"RepoDigests: {d}" for d in image.repo_digests)]
    if image.size:
        lines.append(f"Size: {image.size}")
    if image.uid is not None:
        lines.append(f"Uid: {image.uid.value}")
    if image.username:
        lines.append(f"Username: {image.username}")
    if image.pinned:
        lines.append("Pinned: true")
    return "\n".join(lines) + "\n"


@app.command()
def images(
    ctx: typer.Context,
    repository: Annotated[str, typer.Argument(help="REPOSITORY[:TAG] to list (all when omitted)")] = "",
    digests: Annotated[bool, typer.Option("--digests", help="show digests")] = False,
    no_trunc: Annotated[bool, typer.Option("--no-trunc", help="do not shorten ids and digests")] = False,
    quiet: Annotated[bool, typer.Option("--quiet", "-q", help="only image ids")] = False,
    output: Annotated[str, typer.Option("--output", "-o", help="table or json")] = "table",
    verbose: Annotated[bool, typer.Option("--verbose", "-v", help="every field of every image")] = False,
    pinned: Annotated[bool, typer.Option("--pinned", help="show whether each image is pinned")] = False,
    _all: Annotated[bool, typer.Option("--all", "-a", help="accepted for crictl compatibility")] = False,
) -> None:
    """List images."""
    request = ListImagesRequest(filter=ImageFilter(image=ImageSpec(image=repository)) if repository else None)
    listed = list(call_images(ctx, lambda stub: stub.list_images(request)).images)
    if output == "json":
        typer.echo(json.dumps({"images": [i.to_dict(include_default_values=True) for i in listed]}, indent=2))
        return
    if output != "table":
        raise _fail(f"--output {output!r}: expected table or json")
    if quiet:
        for image in listed:
            typer.echo(image.id)
        return
    if verbose:
        for image in listed:
            typer.echo(_verbose(image))
        return
    header = ("IMAGE", "TAG", *(["DIGEST"] if digests else []), "IMAGE ID", "SIZE", *(["PINNED"] if pinned else []))
    print_table([header, *(row for image in listed for row in _rows(image, digests, no_trunc, pinned))])


def _status(ctx: typer.Context, text: str, verbose: bool) -> Any:
    reply = call_images(ctx, lambda stub: stub.image_status(ImageStatusRequest(image=ImageSpec(image=text),
                                                                                 verbose=verbose)))
    if reply.image is None:
        raise _fail(f"no such image {text!r} present")
    return reply


@app.command()
def inspecti(
    ctx: typer.Context,
    names: Annotated[list[str], typer.Argument(help="image names or ids")],
    output: Annotated[str, typer.Option("--output", "-o", help="json or table")] = "json",
    quiet: Annotated[bool, typer.Option("--quiet", "-q", help="only the image status, no verbose info")] = False,
) -> None:
    """Show images' status, with the runtime's verbose info, as JSON."""
    for text in names:
        reply = _status(ctx, text, not quiet)
        if output == "table":
            typer.echo(_verbose(reply.image))
            continue
        if output != "json":
            raise _fail(f"--output {output!r}: expected json or table")
        document: dict[str, Any] = {"status": reply.image.to_dict(include_default_values=True)}
        if reply.info:
            document["info"] = {}
            for key, value in reply.info.items():
                try:
                    document["info"][key] = json.loads(value)
                except ValueError:
                    document["info"][key] = value
        typer.echo(json.dumps(document, indent=2))


@app.command()
def rmi(
    ctx: typer.Context,
    names: Annotated[list[str] | None, typer.Argument(help="image names or ids")] = None,
    all_images: Annotated[bool, typer.Option("--all", "-a", help="remove every image")] = False,
    prune: Annotated[bool, typer.Option("--prune", "-q", help="remove images no container uses")] = False,
) -> None:
    """Remove images; a name that shares its image with other tags only loses that tag."""
    targets = list(names or [])
    if all_images or prune:
        listed = call_images(ctx, lambda stub: stub.list_images(ListImagesRequest())).images
        used: set[str] = set()
        if prune:
            containers = call_runtime(ctx, lambda stub: stub.list_containers(ListContainersRequest())).containers
            used = {c.image_ref for c in containers} | {c.image.image for c in containers if c.image}
        targets += [i.id for i in listed if i.id not in used and not used & set(i.repo_tags)]
    if not targets:
        raise _fail("give image names or ids, --all or --prune")
    failed = False
    for text in targets:
        reply = call_images(ctx, lambda stub, t=text: stub.image_status(ImageStatusRequest(image=ImageSpec(image=t))))
        if reply.image is None:
            typer.echo(f"crirt ctl: no such image {text}", err=True)
            failed = True
            continue
        before = reply.image
        call_images(ctx, lambda stub, t=text: stub.remove_image(RemoveImageRequest(image=ImageSpec(image=t))))
        after = call_images(ctx, lambda stub, i=before.id: stub.image_status(
            ImageStatusRequest(image=ImageSpec(image=i))))
        remaining = set(after.image.repo_tags) if after.image else set()
        gone = [tag for tag in before.repo_tags if tag not in remaining]
        for tag in gone or ([] if after.image else [before.id]):
            typer.echo(f"Deleted: {tag}")
    if failed:
        raise typer.Exit(1)


@app.command()
def imagefsinfo(
    ctx: typer.Context,
    output: Annotated[str, typer.Option("--output", "-o", help="json or table")] = "json",
) -> None:
    """Show the image and container filesystems' usage."""
    reply = call_images(ctx, lambda stub: stub.image_fs_info(ImageFsInfoRequest()))
    if output == "json":
        typer.echo(json.dumps({"status": reply.to_dict(include_default_values=True)}, indent=2))
        return
    if output != "table":
        raise _fail(f"--output {output!r}: expected json or table")
    rows = [("KIND", "MOUNTPOINT", "USED", "INODES")]
    for kind, usages in (("image", reply.image_filesystems), ("container", reply.container_filesystems)):
        for usage in usages:
            rows.append((kind, usage.fs_id.mountpoint if usage.fs_id else "",
                         human_size(usage.used_bytes.value if usage.used_bytes else 0),
                         str(usage.inodes_used.value if usage.inodes_used else 0)))
    print_table(rows)
