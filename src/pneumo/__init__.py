"""pneumo: pneumonia classification from pediatric chest X-rays.

A research tool, not a medical device: its outputs must not be used for diagnosis or treatment.
"""

from __future__ import annotations

__version__ = "0.1.0"

__all__ = ["__version__"]
