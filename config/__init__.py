"""Settings, storage access and logging shared by every part of vodflow."""

from config.settings import Settings, get_settings, reset_settings

__all__ = ["Settings", "get_settings", "reset_settings"]
