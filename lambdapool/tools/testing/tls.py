"""Self-signed certificates for test servers; the code lives in :mod:`lambdapool.tools.proxy.tls`."""

from lambdapool.tools.proxy.tls import write_self_signed

__all__ = ["write_self_signed"]
