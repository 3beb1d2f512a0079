"""lpr_sweep: find the best deployable variant of LPRNet (prune, quantize, compile; measure; log)."""


class ConfigError(ValueError):
    """A configuration value that cannot work; the message names the key and the fix."""


class DataError(ValueError):
    """Data problem a user can fix (a missing, empty, truncated or corrupt file); the message names the file and the fix."""


def restore_hint(root: object) -> str:
    """How to put back a data root's missing or damaged file: download into that root, which re-fetches
    only what does not match (a download elsewhere would leave data.root pointing at the damage)."""
    return f"restore it with `python -m lpr_sweep.download --dest {root}` (re-fetches only what is missing or damaged)"
