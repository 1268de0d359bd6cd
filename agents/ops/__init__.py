"""What the agent does when asked: the closed set of requests, the ops state and
audit on disk, the node's own tools it runs."""
