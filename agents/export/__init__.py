"""The agent's ``/metrics`` endpoint and what it says."""
