"""User-facing errors: the CLI prints their message on one line and exits with code 2."""


class GatedAttnError(Exception):
    """Bad input from the user (config, data, paths); the message says what is wrong and what is allowed."""


class ConfigError(GatedAttnError, ValueError):
    """An unknown key, a bad value or an impossible combination in a config."""
