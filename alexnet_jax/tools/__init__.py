"""Command-line tools around a trained model: predict, visualize, interpret, prepare."""
