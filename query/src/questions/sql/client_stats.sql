WITH calls AS (SELECT * FROM api_calls WHERE {window}),
failing AS (
SELECT client_id, endpoint, row_number() OVER (
PARTITION BY client_id ORDER BY count(*) DESC, endpoint) AS place
FROM calls WHERE is_error GROUP BY client_id, endpoint)
SELECT c.client_id, count(*) AS calls,
sum(CASE WHEN c.is_error THEN 1 ELSE 0 END) AS errors,
avg(CASE WHEN c.is_error THEN 1.0 ELSE 0.0 END) AS error_rate,
approx_percentile_cont(c.duration_ms, 0.95) AS p95_ms,
max(f.endpoint) AS top_failing_endpoint
FROM calls c LEFT JOIN failing f
ON (f.client_id IS NOT DISTINCT FROM c.client_id) AND f.place = 1
GROUP BY c.client_id
ORDER BY calls DESC, c.client_id
