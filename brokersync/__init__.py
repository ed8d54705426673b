"""brokersync: keep a brokerage account mirrored in PostgreSQL through an event log."""

__version__ = "0.1.0"
