WITH merged AS (
SELECT service_name, endpoint, sum(calls) AS calls, sum(errors) AS errors,
max(max_ms) AS max_ms, sketch_merge(latency) AS latency
FROM {minutes} GROUP BY service_name, endpoint)
SELECT service_name, endpoint, calls, calls / {seconds} AS rate_per_s,
errors, errors * 1.0 / calls AS error_rate,
sketch_percentile(latency, 0.5) AS p50_ms,
sketch_percentile(latency, 0.95) AS p95_ms,
sketch_percentile(latency, 0.99) AS p99_ms,
max_ms
FROM merged
GROUP BY service_name, endpoint, calls, errors, max_ms
ORDER BY calls DESC, service_name, endpoint
