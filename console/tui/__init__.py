"""The Textual screen (never imported by the headless model, the links or the agents)."""
