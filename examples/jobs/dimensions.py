"""Count records per partition, from the dimensions alone (the JSON is never parsed).

Output: ``<reason>/<appName>/<channel>/<version>/<buildid>/<day>\t<records>``.  The
fastest kind of job: it shows what a filter selects and how big each partition is.
"""


def map(key, dims, value, context):
    context.write("/".join(dims), 1)


def combine(key, values, context):
    context.write(key, sum(values))


def reduce(key, values, context):
    context.write(key, sum(values))
