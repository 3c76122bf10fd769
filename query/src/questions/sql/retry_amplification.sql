WITH calls AS (
SELECT client_id, endpoint, time, is_error, resend_count, http_status_code,
error_type, trace_id, span_id,
lag(is_error) OVER (PARTITION BY client_id, endpoint ORDER BY time) AS after_error,
lag(time) OVER (PARTITION BY client_id, endpoint ORDER BY time) AS after_time
FROM api_calls WHERE {window}),
fanout AS (
SELECT c.client_id, c.endpoint, count(*) AS dependency_calls
FROM calls c JOIN spans d ON d.trace_id = c.trace_id AND d.parent_span_id = c.span_id
WHERE d.span_kind IN ('client', 'producer') AND {window_d}
GROUP BY c.client_id, c.endpoint),
flagged AS (
SELECT *, CASE WHEN coalesce(resend_count, 0) > 0
OR (after_error AND time - after_time <= interval '{retry_gap_s} seconds')
THEN 1 ELSE 0 END AS retry
FROM calls)
SELECT c.client_id, c.endpoint, count(*) AS calls,
sum(c.retry) AS retries, avg(c.retry * 1.0) AS retry_rate,
sum(CASE WHEN c.http_status_code IN (408, 504)
OR lower(c.error_type) LIKE '%timeout%' OR lower(c.error_type) LIKE '%deadline%'
THEN 1 ELSE 0 END) AS timeouts,
coalesce(max(f.dependency_calls), 0) * 1.0 / count(*) AS dependency_calls_per_request
FROM flagged c LEFT JOIN fanout f
ON (f.client_id IS NOT DISTINCT FROM c.client_id) AND f.endpoint = c.endpoint
GROUP BY c.client_id, c.endpoint
ORDER BY retries DESC, calls DESC, c.client_id, c.endpoint
