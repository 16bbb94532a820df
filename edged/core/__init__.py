"""Numeric core: pure numpy functions (letterbox, head decoders, NMS, metrics) and the values
they exchange. No I/O, no clocks, no logging, no threads."""
