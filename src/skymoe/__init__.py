"""SkyMoE: mixture-of-experts vision-language models for remote sensing."""

__version__ = "0.1.0"
__all__ = ["Pipeline"]


def __getattr__(name: str):
    # Lazy: `import skymoe` must stay cheap (no torch) for the CLI and the data layer.
    if name == "Pipeline":
        from skymoe.infer import Pipeline

        return Pipeline
    raise AttributeError(f"module 'skymoe' has no attribute {name!r}")
