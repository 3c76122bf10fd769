SELECT api_version, client_id, count(*) AS calls, max(time) AS last_seen,
api_version IN ({deprecated}) AS deprecated
FROM api_calls WHERE {window} AND api_version IS NOT NULL
GROUP BY api_version, client_id
ORDER BY api_version, calls DESC, client_id
