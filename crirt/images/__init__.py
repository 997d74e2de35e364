"""The image service: registry client, content store, layer snapshots, image records and the CRI handlers.

``service.ImageService`` is the entry point; ``snapshots.SnapshotStore`` also offers the container rootfs API
(prepare an overlay mount, report its writable-layer usage, remove it) that the container handlers use.
"""
