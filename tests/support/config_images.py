"""Images whose config (User, Env, WorkingDir, Entrypoint, Cmd) and /etc/passwd and /etc/group the container
behaviour tests check a running container against.

All of them are the runnable busybox base plus one layer with the users below and a working directory; they
differ only in their image config, so the layers are shared in the registry.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from support.images import LayerTar, Layout, busybox_layer, push

PASSWD = b"""root:x:0:0:root:/root:/bin/sh
app:x:1000:1000:app:/home/app:/bin/sh
other:x:1001:1001::/:/bin/sh
nobody:x:65534:65534::/:/bin/false
"""
GROUP = b"""root:x:0:
app:x:1000:
other:x:1001:
extra:x:2000:app
audio:x:3000:other,app
web:x:4000:
nogroup:x:65534:
"""
"""``app`` (1000) is a member of ``extra`` (2000) and ``audio`` (3000); ``other`` (1001) of ``audio`` only."""

WORKDIR = "/srv/app"

CONFIGS: dict[str, dict[str, Any]] = {
    "plain": {},
    "user-name": {"User": "app"},
    "user-name-group": {"User": "app:web"},
    "user-uid": {"User": "1000"},
    "user-unknown-uid": {"User": "4321"},
    "config": {"Entrypoint": ["/bin/busybox", "echo", "ep"], "Cmd": ["cmd1", "cmd2"], "WorkingDir": WORKDIR,
               "Env": ["PATH=/bin", "FROM_IMAGE=image", "SHARED=image", "EMPTY_IN_IMAGE="]},
    "empty-entrypoint": {"Entrypoint": [""], "Cmd": ["/bin/busybox", "echo", "cmd", "only"]},
}
"""Image name -> what its config sets on top of the base config (User "", Env PATH=/bin, Cmd /bin/sh)."""


def users_layer() -> LayerTar:
    """The users and groups above, and the image's working directory (owned by ``app``)."""
    return (LayerTar().file("etc/passwd", PASSWD).file("etc/group", GROUP).dir("srv")
            .dir(WORKDIR.lstrip("/"), uid=1000, gid=1000))


def publish_config_images(path: Path, registry_host: str) -> dict[str, str]:
    """Build every image of ``CONFIGS`` in a layout at ``path``, push them; return name -> reference."""
    layout = Layout(path)
    layers = [(busybox_layer().bytes(), "gzip"), (users_layer().bytes(), "gzip")]
    refs = {}
    for name, config in CONFIGS.items():
        layout.tag(layout.image(layers, config=config), name)
        refs[name] = f"{registry_host}/behaviour/{name}:1"
        push(layout, name, refs[name])
    return refs
