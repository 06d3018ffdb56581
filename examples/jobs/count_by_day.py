"""Count records per submission day (the original telemetry-server's record counter).

    telemetry mapreduce --job examples/jobs/count_by_day.py --filter examples/filters/all.json --output days.txt

Output: one line per day, ``<yyyymmdd>\t<records>``.
"""


def map(key, dims, value, context):
    reason, app_name, channel, version, build_id, submission_date = dims
    context.write(submission_date, 1)


def combine(key, values, context):
    context.write(key, sum(values))


def reduce(key, values, context):
    context.write(key, sum(values))
