"""Process-level set-up that must happen before or around JAX: XLA:CPU settings, multi-process join."""
