"""psycopg 3 against apiscope's PostgreSQL listener: parameters bound by the server (the
extended protocol), types decoded by the driver. Prints one JSON object of answers."""

import json
import sys

import psycopg

host, port = sys.argv[1], sys.argv[2]
answers = {}
with psycopg.connect(host=host, port=port, user="analyst", dbname="apiscope",
                     sslmode="disable", connect_timeout=10, autocommit=True) as conn:
    with conn.cursor() as cur:
        cur.execute(
            "SELECT count(*) FROM spans WHERE client_id = %s AND span_kind = %s",
            ("web", "server"),
        )
        answers["web_calls"] = cur.fetchone()[0]

        cur.execute(
            "SELECT time FROM spans WHERE client_id = %(client)s ORDER BY time LIMIT 1",
            {"client": "ios"},
        )
        first = cur.fetchone()[0]
        answers["first_ios_epoch"] = first.timestamp()
        answers["first_ios_tz_aware"] = first.tzinfo is not None

        cur.execute(
            "SELECT service_name, count(*) FROM spans "
            "WHERE is_error AND span_kind = %s GROUP BY service_name",
            ("server",),
        )
        answers["errors_by_service"] = {name: n for name, n in cur.fetchall()}

    try:
        conn.execute("CREATE TABLE notes AS SELECT 1 AS n")
        answers["refused_sqlstate"] = None
    except psycopg.Error as error:
        answers["refused_sqlstate"] = error.sqlstate

print(json.dumps(answers))
