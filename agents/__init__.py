"""Everything that runs on a GPU node: the agent, its samplers, and the wire protocol."""

__version__ = "0.1.0"
