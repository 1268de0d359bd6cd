"""The agent's daemon and its unix socket: the loop, the clients, who they are."""
