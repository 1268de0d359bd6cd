"""Everything that runs on the operator's side: transport, fleet model, TUI and commands."""

__version__ = "0.1.0"
