"""Where the model's frames come from: one SSH stream per node, or a Prometheus
server that scrapes the agents. No Textual."""
