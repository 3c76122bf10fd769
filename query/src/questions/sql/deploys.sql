WITH versions AS ({versions}),
ranked AS (
SELECT service_name, deployment_environment, service_version, first_seen,
lag(service_version) OVER (PARTITION BY service_name, deployment_environment
ORDER BY first_seen, service_version) AS previous_version
FROM versions),
deployed AS (
SELECT service_name, deployment_environment, service_version, previous_version, first_seen,
date_trunc('minute', first_seen) AS minute
FROM ranked WHERE first_seen >= '{from}' AND first_seen < '{to}'),
compared AS (
SELECT d.service_name, d.deployment_environment, d.service_version, d.previous_version,
d.first_seen, a.endpoint,
sum(CASE WHEN a.minute < d.minute THEN a.calls ELSE 0 END) AS calls_before,
sum(CASE WHEN a.minute >= d.minute THEN a.calls ELSE 0 END) AS calls_after,
sum(CASE WHEN a.minute < d.minute THEN a.errors ELSE 0 END) AS errors_before,
sum(CASE WHEN a.minute >= d.minute THEN a.errors ELSE 0 END) AS errors_after,
sketch_percentile(CASE WHEN a.minute < d.minute THEN a.latency END, 0.95) AS p95_ms_before,
sketch_percentile(CASE WHEN a.minute >= d.minute THEN a.latency END, 0.95) AS p95_ms_after
FROM deployed d JOIN {around_minutes} a ON a.service_name = d.service_name
AND (a.deployment_environment IS NOT DISTINCT FROM d.deployment_environment)
AND a.minute >= d.minute - INTERVAL '{compared_minutes} minutes'
AND a.minute < d.minute + INTERVAL '{compared_minutes} minutes'
GROUP BY d.service_name, d.deployment_environment, d.service_version, d.previous_version,
d.first_seen, a.endpoint)
SELECT service_name, service_version, previous_version, first_seen AS deployed_at, endpoint,
calls_before, calls_after,
errors_before * 1.0 / nullif(calls_before, 0) AS error_rate_before,
errors_after * 1.0 / nullif(calls_after, 0) AS error_rate_after,
p95_ms_before, p95_ms_after, deployment_environment
FROM compared
ORDER BY deployed_at DESC, service_name, deployment_environment, endpoint
