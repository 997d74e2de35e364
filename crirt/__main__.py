"""``python -m crirt`` runs the crirt command."""

from crirt.cli import app

app(prog_name="crirt")
