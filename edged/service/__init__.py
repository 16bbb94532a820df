"""The daemon's wiring and lifecycle: building the stages from the config, signals, reloads,
systemd notification, logging."""
