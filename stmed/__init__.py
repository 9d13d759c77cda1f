"""stmed: self-train medical vision-language models (STLLaVA-Med) and measure them."""

__version__ = "0.1.0"
