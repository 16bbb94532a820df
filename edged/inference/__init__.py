"""Inference engine: TFLite runtime, model loading and the per-frame detector."""
