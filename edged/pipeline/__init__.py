"""The stages: threads that each own an OS resource (capture, the inference worker, the
publisher) and the hand-offs between them."""
