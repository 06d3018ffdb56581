"""The reduce stage: MapReduce jobs, filters, inputs and executors."""
