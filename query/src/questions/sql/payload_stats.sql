WITH sized AS (
SELECT service_name, endpoint, client_id, CAST(request_bytes AS DOUBLE) AS request_bytes,
CAST(response_bytes AS DOUBLE) AS response_bytes
FROM api_calls
WHERE {window} AND (request_bytes IS NOT NULL OR response_bytes IS NOT NULL)),
endpoints AS (
SELECT service_name, endpoint, sum(response_bytes) AS response_bytes_total,
approx_percentile_cont(response_bytes, 0.95) AS response_bytes_p95
FROM sized GROUP BY service_name, endpoint)
SELECT s.service_name, s.endpoint, s.client_id, count(*) AS calls,
approx_percentile_cont(s.response_bytes, 0.5) AS response_bytes_p50,
approx_percentile_cont(s.response_bytes, 0.95) AS response_bytes_p95,
CAST(max(s.response_bytes) AS BIGINT) AS response_bytes_max,
CAST(sum(s.response_bytes) AS BIGINT) AS response_bytes_total,
CAST(sum(s.request_bytes) AS BIGINT) AS request_bytes_total,
sum(s.response_bytes) / nullif(max(e.response_bytes_total), 0) AS share_of_endpoint_bytes,
max(e.response_bytes_p95) AS endpoint_response_bytes_p95
FROM sized s JOIN endpoints e
ON s.service_name = e.service_name AND s.endpoint = e.endpoint
GROUP BY s.service_name, s.endpoint, s.client_id
ORDER BY response_bytes_total DESC NULLS LAST, s.service_name, s.endpoint, s.client_id
