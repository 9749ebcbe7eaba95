"""Kafka security settings as kafka-python client options (TLS, SASL PLAIN/SCRAM), one mapping for every client.

Pure: it reads ``KafkaSettings`` and returns keyword arguments; nothing connects or opens a file here.
The options carry the SASL and key passwords in clear, so they are handed to a client and never logged.
"""

from __future__ import annotations

from typing import Any

from monitor.config import KafkaSettings


def client_options(settings: KafkaSettings) -> dict[str, Any]:
    """Keyword arguments for ``KafkaProducer``, ``KafkaConsumer`` and ``KafkaAdminClient``.

    PLAINTEXT gives only ``security_protocol``; TLS adds the CA (unset: the system trust store, as
    kafka-python loads it), the client certificate for mutual TLS and the host-name check; SASL adds
    the mechanism and credentials (kafka-python names them ``sasl_plain_*`` for SCRAM too).
    """
    options: dict[str, Any] = {"security_protocol": settings.security_protocol}
    if settings.uses_tls:
        options["ssl_check_hostname"] = settings.ssl_check_hostname
        for name in ("ssl_cafile", "ssl_certfile", "ssl_keyfile"):
            if (path := getattr(settings, name)) is not None:
                options[name] = str(path)
        if settings.ssl_key_password is not None:
            options["ssl_password"] = settings.ssl_key_password.get_secret_value()
    if settings.uses_sasl:
        assert settings.sasl_password is not None  # noqa: S101 - KafkaSettings refuses SASL without one
        options["sasl_mechanism"] = settings.sasl_mechanism
        options["sasl_plain_username"] = settings.sasl_username
        options["sasl_plain_password"] = settings.sasl_password.get_secret_value()
    return options


def describe(settings: KafkaSettings) -> str:
    """How the clients connect, for logs and errors: protocol, mechanism and user, never a secret."""
    text = settings.security_protocol
    if settings.uses_sasl:
        text += f" ({settings.sasl_mechanism} as {settings.sasl_username})"
    return text
