"""The bench stage (latency, parity, compare): not built yet, see issue 5."""
