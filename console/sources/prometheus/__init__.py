"""The fleet read from Prometheus: the HTTP client, the queries
and how their answers become frames, and the poller."""
