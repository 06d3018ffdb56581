"""Operations: doctor, retention.

Built-in plugins ``ops.doctor`` (:mod:`.doctor`, ``telemetry doctor``) and
``ops.retention`` (:mod:`.retention`, ``telemetry retention sweep``).
"""
