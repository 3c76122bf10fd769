SELECT date_trunc('minute', time) AS minute, service_name, endpoint,
source, count(*) AS calls, sum(CASE WHEN is_error THEN 1 ELSE 0 END) AS errors,
max(duration_ms) AS max_ms, percentile_sketch(duration_ms) AS latency,
min(time) AS first_time, max(time) AS last_time,
latency_counts(duration_ms) AS latency_counts, service_version, deployment_environment
FROM api_calls WHERE {filter} GROUP BY 1, 2, 3, 4, service_version, deployment_environment
