"""AlexNet in JAX/Flax, trained the way Krizhevsky, Sutskever and Hinton (2012) did."""

__version__ = "0.1.0"
