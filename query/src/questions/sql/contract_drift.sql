WITH seen AS (
SELECT http_method, http_route, route_shape(http_route) AS shape,
http_status_code, count(*) AS calls, max(time) AS last_seen
FROM api_calls WHERE {window}
GROUP BY http_method, http_route, http_status_code),
documented AS (
SELECT DISTINCT method, route, route_shape(route) AS shape FROM openapi_operations),
undocumented AS (
SELECT s.http_method, s.http_route, sum(s.calls) AS calls,
max(s.last_seen) AS last_seen
FROM seen s LEFT JOIN documented d
ON d.method = s.http_method AND d.shape = s.shape
WHERE d.route IS NULL GROUP BY s.http_method, s.http_route),
unused AS (
SELECT d.method, d.route FROM documented d
LEFT JOIN (SELECT DISTINCT http_method, shape FROM seen) s
ON s.http_method = d.method AND s.shape = d.shape
WHERE s.shape IS NULL),
statuses AS (
SELECT s.http_method, d.route AS http_route, s.http_status_code,
sum(s.calls) AS calls, max(s.last_seen) AS last_seen
FROM seen s JOIN documented d ON d.method = s.http_method AND d.shape = s.shape
LEFT JOIN openapi_operations o ON o.method = d.method AND o.route = d.route
AND (o.status = CAST(s.http_status_code AS VARCHAR)
OR o.status = concat(substr(CAST(s.http_status_code AS VARCHAR), 1, 1), 'XX')
OR o.status = 'DEFAULT')
WHERE o.route IS NULL
GROUP BY s.http_method, d.route, s.http_status_code)
SELECT 'undocumented_route' AS kind, http_method, http_route,
arrow_cast(NULL, 'Int32') AS http_status_code, calls, last_seen FROM undocumented
UNION ALL
SELECT 'unused_operation' AS kind, method AS http_method, route AS http_route,
arrow_cast(NULL, 'Int32') AS http_status_code, CAST(0 AS BIGINT) AS calls,
arrow_cast(NULL, 'Timestamp(Nanosecond, Some("UTC"))') AS last_seen FROM unused
UNION ALL
SELECT 'undocumented_status' AS kind, http_method, http_route, http_status_code,
calls, last_seen FROM statuses
ORDER BY kind, http_method, http_route, http_status_code
