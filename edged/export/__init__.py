"""Tooling: darknet → TFLite export (TensorFlow and Vela are imported lazily, only here)."""
