WITH now_ AS (
SELECT 'client' AS dimension, client_id AS value, count(*) AS calls
FROM api_calls WHERE {window} GROUP BY client_id
UNION ALL
SELECT 'endpoint' AS dimension, endpoint AS value, count(*) AS calls
FROM api_calls WHERE {window} GROUP BY endpoint),
before_ AS (
SELECT 'client' AS dimension, client_id AS value, count(*) AS calls
FROM api_calls WHERE {previous} GROUP BY client_id
UNION ALL
SELECT 'endpoint' AS dimension, endpoint AS value, count(*) AS calls
FROM api_calls WHERE {previous} GROUP BY endpoint),
totals AS (
SELECT (SELECT count(*) FROM api_calls WHERE {window}) AS now_total,
(SELECT count(*) FROM api_calls WHERE {previous}) AS before_total),
joined AS (
SELECT coalesce(n.dimension, b.dimension) AS dimension,
coalesce(n.value, b.value) AS value,
coalesce(n.calls, 0) AS calls, coalesce(b.calls, 0) AS previous_calls
FROM now_ n FULL JOIN before_ b
ON n.dimension = b.dimension AND (n.value IS NOT DISTINCT FROM b.value))
SELECT j.dimension, j.value, j.calls, j.previous_calls,
j.calls * 1.0 / nullif(t.now_total, 0) AS share,
j.previous_calls * 1.0 / nullif(t.before_total, 0) AS previous_share,
coalesce(j.calls * 1.0 / nullif(t.now_total, 0), 0.0)
- coalesce(j.previous_calls * 1.0 / nullif(t.before_total, 0), 0.0) AS share_change
FROM joined j CROSS JOIN totals t
ORDER BY abs(share_change) DESC, j.dimension, j.value
