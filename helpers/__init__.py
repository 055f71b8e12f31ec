"""课程共用的辅助包 / Shared helpers imported by every notebook of the course."""

from helpers.profiles import Profile, get_profile, use_model

__all__ = ["Profile", "get_profile", "use_model"]
