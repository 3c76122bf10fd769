"""Counts a Delta table's rows per endpoint twice, with engines apiscope does not use: the
`deltalake` package reading the table through its log, and pyarrow reading exactly the
Parquet files the log lists. Prints both as JSON. Given a COLUMN, sums it per endpoint
instead of counting rows.

Usage: read_delta.py TABLE_URI [COLUMN]   (S3 settings from the AWS_* variables)
"""

import collections
import json
import os
import sys
from urllib.parse import urlparse

import pyarrow.fs
import pyarrow.parquet
from deltalake import DeltaTable

uri = sys.argv[1]
weight = sys.argv[2] if len(sys.argv) > 2 else None
columns = ["endpoint"] + ([weight] if weight else [])


def per_endpoint(rows):
    """Rows (or the weight column's sum) per endpoint of a pyarrow table."""
    counted = collections.Counter()
    endpoints = rows.column("endpoint").to_pylist()
    weights = rows.column(weight).to_pylist() if weight else [1] * len(endpoints)
    for endpoint, count in zip(endpoints, weights):
        counted[endpoint] += count
    return counted

options = {key: value for key, value in os.environ.items() if key.startswith("AWS_")}
table = DeltaTable(uri, storage_options=options)

through_log = per_endpoint(table.to_pyarrow_table(columns=columns))

endpoint = urlparse(os.environ["AWS_ENDPOINT_URL"])
filesystem = pyarrow.fs.S3FileSystem(
    access_key=os.environ["AWS_ACCESS_KEY_ID"],
    secret_key=os.environ["AWS_SECRET_ACCESS_KEY"],
    region=os.environ["AWS_REGION"],
    endpoint_override=endpoint.netloc,
    scheme=endpoint.scheme,
)
through_files = collections.Counter()
files = table.file_uris()
for file in files:
    path = file.removeprefix("s3://")
    rows = pyarrow.parquet.read_table(path, columns=columns, filesystem=filesystem)
    through_files.update(per_endpoint(rows))

print(
    json.dumps(
        {
            "version": table.version(),
            "files": len(files),
            "partition_columns": table.metadata().partition_columns,
            "delta": dict(through_log),
            "parquet": dict(through_files),
        }
    )
)
