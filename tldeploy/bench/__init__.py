"""The bench stage: latency (`latency`), parity (`parity`), the bench run and its document
(`bench`, `report`, `environment`) and the regression gate (`compare`)."""
