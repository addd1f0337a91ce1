"""replicante-poller: the agent transport of Replicante Core."""

__version__ = "0.1.0"
