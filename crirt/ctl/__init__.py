"""``crirt ctl``: a small CRI client with crictl's verbs, flags and config file."""

from crirt.ctl import containers, images, runtime, sandboxes, stats, streaming
from crirt.ctl.app import app

__all__ = ["app", "containers", "images", "runtime", "sandboxes", "stats", "streaming"]
