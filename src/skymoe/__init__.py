"""SkyMoE: mixture-of-experts vision-language models for remote sensing."""

__version__ = "0.1.0"
