"""Run ``telemetry mapreduce`` under ``spark-submit`` (a cluster, YARN, Amazon EMR ...).

spark-submit wants a Python file as the application; this one hands its
arguments to ``telemetry mapreduce --executor spark``::

    spark-submit --master yarn --deploy-mode client examples/spark/mapreduce_submit.py \
        --job examples/jobs/count_by_day.py --filter examples/filters/all.json \
        --input s3://telemetry-bucket/v2/ --output counts.txt --mappers 64 --reducers 8

The master and settings given to spark-submit apply (leave
``reduce.spark.master`` null; ``reduce.spark.conf`` adds to them).  Every
node needs ``pip install telemetry-core`` (an EMR bootstrap action); the job
script itself travels with the tasks.
"""

import sys

from telemetry_core.cli import main

if __name__ == "__main__":
    sys.argv = ["telemetry", "mapreduce", "--executor", "spark", *sys.argv[1:]]
    main()
