"""Publishing to S3: the publisher, checksums, and the bucket's data policy.

Built-in plugins ``store.s3`` (:mod:`.publisher`, ``telemetry_store_publisher``
for ``store.publish.backend: s3``) and ``store.s3_policy`` (:mod:`.policy`,
``telemetry policy``); :mod:`.digests` says what S3 will report for a file.
"""
