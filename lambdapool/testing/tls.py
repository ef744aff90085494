"""Self-signed certificates for test servers; the code lives in :mod:`lambdapool.proxy.tls`."""

from lambdapool.proxy.tls import write_self_signed

__all__ = ["write_self_signed"]
