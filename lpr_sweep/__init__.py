"""lpr_sweep: find the best deployable variant of LPRNet (prune, quantize, compile; measure; log)."""


class ConfigError(ValueError):
    """A configuration value that cannot work; the message names the key and the fix."""
