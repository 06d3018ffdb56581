"""The store stage: the raw spool, the processor, the partitioned layout, publishing."""
