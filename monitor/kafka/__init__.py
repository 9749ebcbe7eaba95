"""Every Kafka concern of the library: topic layout (``topology``), admin, offsets and time-range
reads (``broker``), client security options (``security``) and the post producer (``producer``).

The Faust wiring of the stream lives in ``stream_jobs`` (its TLS/SASL credentials in
``stream_jobs/security.py``); running a local broker is ``monitor.services.kafka``'s.
"""
