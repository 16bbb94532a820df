"""The public API: message kinds declared once (encoder, decoder and JSON Schema derive from
them) and the subscriber client."""
