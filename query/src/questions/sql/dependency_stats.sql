WITH deps AS (
SELECT service_name, dependency, duration_ms, is_error, trace_id, parent_span_id
FROM spans
WHERE span_kind IN ('client', 'producer') AND dependency IS NOT NULL AND {window}),
callers AS (
SELECT d.service_name, d.dependency, sum(s.duration_ms) AS caller_ms
FROM (SELECT DISTINCT service_name, dependency, trace_id, parent_span_id FROM deps) d
JOIN api_calls s ON s.trace_id = d.trace_id AND s.span_id = d.parent_span_id
GROUP BY d.service_name, d.dependency)
SELECT d.service_name, d.dependency, count(*) AS calls,
sum(CASE WHEN d.is_error THEN 1 ELSE 0 END) AS errors,
avg(CASE WHEN d.is_error THEN 1.0 ELSE 0.0 END) AS error_rate,
approx_percentile_cont(d.duration_ms, 0.5) AS p50_ms,
approx_percentile_cont(d.duration_ms, 0.95) AS p95_ms,
approx_percentile_cont(d.duration_ms, 0.99) AS p99_ms,
sum(d.duration_ms) / max(c.caller_ms) AS share_of_caller_time
FROM deps d LEFT JOIN callers c
ON c.service_name = d.service_name AND c.dependency = d.dependency
GROUP BY d.service_name, d.dependency
ORDER BY calls DESC, d.service_name, d.dependency
