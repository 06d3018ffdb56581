"""Configuration: the YAML loader, the core keys, option declarations, logging setup."""
