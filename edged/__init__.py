"""edged: on-device object-detection daemon (TFLite on i.MX NPUs or the CPU, ZeroMQ out)."""

__version__ = "0.1.0"
