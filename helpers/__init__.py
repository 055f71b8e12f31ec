"""课程共用的辅助包 / Shared helpers imported by every notebook of the course."""

from helpers.noise import silence_known_noise
from helpers.profiles import Profile, get_profile, use_model

silence_known_noise()  # before any lesson imports bitsandbytes (see helpers/noise.py)

__all__ = ["Profile", "get_profile", "use_model"]
