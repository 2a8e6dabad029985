"""Only for alexnet_jax/hooks.py, until it imports these from alexnet_jax.inference (issue 22);
delete this file then. Everything else imports alexnet_jax.inference."""

from alexnet_jax.inference.filters import conv1_filter_grid, towers_of  # noqa: F401
