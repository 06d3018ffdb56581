"""The compress stage: codecs."""
