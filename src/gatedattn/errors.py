"""User-facing errors: the CLI prints their message on one line and exits with code 2."""


class GatedAttnError(Exception):
    """Bad input from the user (config, data, paths); the message says what is wrong and what is allowed."""


class ConfigError(GatedAttnError, ValueError):
    """An unknown key, a bad value or an impossible combination in a config."""


class MissingExtraError(GatedAttnError, ImportError):
    """An optional dependency is not installed; the message names the pip extra that brings it."""
