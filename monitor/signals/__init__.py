"""Spike detection over flagged health signals: EARS C1/C2/C3 (``ears``, pure) and the database adapter (``detect``)."""
