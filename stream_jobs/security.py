"""Kafka security settings as Faust ``broker_credentials`` (aiokafka): TLS context, SASL PLAIN/SCRAM.

The kafka-python clients get the same settings from ``monitor.kafka.security``; both verify the
broker's certificate against ``ssl_cafile`` (else the system trust store) and check its host name
unless told not to.
"""

from __future__ import annotations

import ssl

import faust

from monitor.config import KafkaSettings
from monitor.errors import ConfigError


def ssl_context(settings: KafkaSettings) -> ssl.SSLContext:
    """A client TLS context: the CA (or the system's), the client certificate for mutual TLS if any."""
    try:
        context = ssl.create_default_context(
            ssl.Purpose.SERVER_AUTH, cafile=str(settings.ssl_cafile) if settings.ssl_cafile else None
        )
    except (OSError, ssl.SSLError) as exc:
        raise ConfigError(f"MONITOR_KAFKA__SSL_CAFILE {settings.ssl_cafile}: not a PEM CA certificate ({exc})") from exc
    context.check_hostname = settings.ssl_check_hostname
    if settings.ssl_certfile is not None and settings.ssl_keyfile is not None:
        password = settings.ssl_key_password.get_secret_value() if settings.ssl_key_password else None
        try:
            context.load_cert_chain(str(settings.ssl_certfile), str(settings.ssl_keyfile), password=password)
        except (OSError, ssl.SSLError) as exc:
            raise ConfigError(f"MONITOR_KAFKA__SSL_CERTFILE/SSL_KEYFILE: cannot load the client certificate "
                              f"({exc})") from exc
    return context


def broker_credentials(settings: KafkaSettings) -> faust.auth.Credentials | None:
    """What Faust's ``broker_credentials`` takes for the configured protocol; None for PLAINTEXT."""
    context = ssl_context(settings) if settings.uses_tls else None
    if settings.uses_sasl:
        assert settings.sasl_password is not None  # noqa: S101 - KafkaSettings refuses SASL without one
        # With a context Faust speaks SASL_SSL, without one SASL_PLAINTEXT.
        return faust.SASLCredentials(
            username=settings.sasl_username,
            password=settings.sasl_password.get_secret_value(),
            mechanism=settings.sasl_mechanism,
            ssl_context=context,
        )
    if context is not None:
        return faust.SSLCredentials(context)
    return None
