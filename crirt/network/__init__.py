"""Pod networking: namespace pinning and mounts (``netns``), CNI over the exec protocol (``cni``) and the
default network crirt writes on a node without one (``defaults``)."""
