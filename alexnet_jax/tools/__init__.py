"""Command lines around a trained model and its data: predict, visualize, export, prepare.

Thin: flags, messages and output formats. What they compute lives in the library
(alexnet_jax.inference, alexnet_jax.checkpoint, alexnet_jax.transfer); nothing outside this
package imports it.
"""
