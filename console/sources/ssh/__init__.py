"""One SSH link per node (asyncssh), carrying the agent's stream and the
requests the console sends."""
