"""crirt's Prometheus metrics: the instruments components report to, the collectors read at scrape time, and
the HTTP endpoint that serves them (``[metrics] address``). See docs/metrics.md for every metric."""
