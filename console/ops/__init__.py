"""The verbs as the console sends them, for the screen and for scripts."""
