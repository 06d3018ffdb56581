"""Publishing to S3: the publisher, checksums, and the bucket's data policy."""
