"""``crirt ctl``: a small CRI client with crictl's verbs, flags and config file."""
