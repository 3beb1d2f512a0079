"""lpr_sweep: find the best deployable variant of LPRNet (prune, quantize, compile; measure; log)."""


class ConfigError(ValueError):
    """A configuration value that cannot work; the message names the key and the fix."""


class DataError(ValueError):
    """Data problem a user can fix (a missing, empty, truncated or corrupt file); the message names the file and the fix."""
