WITH versions AS ({versions}),
deployed AS (
SELECT service_name, string_agg(deploy, ', ' ORDER BY first_seen) AS deploys
FROM versions WHERE first_seen >= '{from}' AND first_seen < '{to}'
GROUP BY service_name),
now_ AS (
SELECT service_name, endpoint, sum(calls) AS calls,
sketch_percentile(latency, 0.95) AS p95
FROM {minutes} GROUP BY service_name, endpoint),
before_ AS (
SELECT service_name, endpoint, sum(calls) AS calls,
sketch_percentile(latency, 0.95) AS p95
FROM {previous_minutes} GROUP BY service_name, endpoint)
SELECT n.service_name, n.endpoint, n.calls, b.calls AS previous_calls,
n.p95 AS p95_ms, b.p95 AS previous_p95_ms, n.p95 - b.p95 AS change_ms,
n.p95 / b.p95 AS change_ratio, d.deploys
FROM now_ n JOIN before_ b
ON n.service_name = b.service_name AND n.endpoint = b.endpoint
LEFT JOIN deployed d ON d.service_name = n.service_name
WHERE n.calls >= {min_calls} AND b.calls >= {min_calls} AND b.p95 > 0
ORDER BY change_ratio DESC, n.service_name, n.endpoint
