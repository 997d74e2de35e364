"""Pod sandboxes: records, lifecycle handlers and queries."""
