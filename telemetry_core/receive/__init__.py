"""The receive stage: the HTTP edge and its built-in receive plugins."""
