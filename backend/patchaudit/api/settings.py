"""The settings moved to :mod:`patchaudit.settings` (shared by the API and the workers); this
name stays so ``from patchaudit.api.settings import Settings`` keeps working."""

from ..settings import MIN_TOKEN_LENGTH, Settings, is_loopback, settings_from_cli

__all__ = ["MIN_TOKEN_LENGTH", "Settings", "is_loopback", "settings_from_cli"]
