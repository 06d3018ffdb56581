"""The raw spool: node-unique framed files the edge appends to."""
