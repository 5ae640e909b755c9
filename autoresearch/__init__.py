"""autoresearch: automated ML research on a nanoGPT training script."""

__version__ = "0.1.0"
