"""The few errors lambdapool raises; each message says what happened and what to do."""

from __future__ import annotations


class LambdapoolError(Exception):
    """Base class of every error lambdapool raises."""

    __module__ = "lambdapool"


class ConfigError(LambdapoolError, ValueError):
    """A setting is wrong: the message names the setting, what was given and what is allowed."""

    __module__ = "lambdapool"


class ConnectionUnavailable(LambdapoolError):
    """No connection could be had within the invocation's budget; says what was tried."""

    __module__ = "lambdapool"


class AuthError(LambdapoolError):
    """The database or pooler rejected the credentials, even after a refresh."""

    __module__ = "lambdapool"
