"""Counts a Delta table's rows per endpoint twice, with engines apiscope does not use: the
`deltalake` package reading the table through its log, and pyarrow reading exactly the
Parquet files the log lists. Prints both as JSON.

Usage: read_delta.py TABLE_URI   (S3 settings from the AWS_* variables)
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
options = {key: value for key, value in os.environ.items() if key.startswith("AWS_")}
table = DeltaTable(uri, storage_options=options)

through_log = collections.Counter(
    table.to_pyarrow_table(columns=["endpoint"]).column("endpoint").to_pylist()
)

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
    rows = pyarrow.parquet.read_table(path, columns=["endpoint"], filesystem=filesystem)
    through_files.update(rows.column("endpoint").to_pylist())

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
