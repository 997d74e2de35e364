"""Containers: records, lifecycle handlers and queries."""
