"""The inference engine: the only code that imports a TFLite runtime (runtime, delegate
selection and probing, the model sidecar, the detector, SoC detection)."""
