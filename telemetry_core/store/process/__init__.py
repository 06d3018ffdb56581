"""The processor: finished spool files to published, compressed files."""
