WITH calls AS (
SELECT service_name, client_id, endpoint, time >= '{from}' AS in_window, count(*) AS calls
FROM api_calls WHERE {previous_and_window}
GROUP BY service_name, client_id, endpoint, time >= '{from}'),
keyed AS (
SELECT 'client' AS dimension, client_id AS value, service_name, in_window, calls FROM calls
UNION ALL
SELECT 'endpoint' AS dimension, endpoint AS value, service_name, in_window, calls FROM calls),
joined AS (
SELECT dimension, value,
sum(CASE WHEN in_window THEN calls ELSE 0 END) AS calls,
sum(CASE WHEN in_window THEN 0 ELSE calls END) AS previous_calls
FROM keyed GROUP BY dimension, value),
totals AS (
SELECT sum(CASE WHEN in_window THEN calls ELSE 0 END) AS now_total,
sum(CASE WHEN in_window THEN 0 ELSE calls END) AS before_total
FROM calls),
deployed AS (
SELECT service_name, first_seen, service_name || ' ' || deploy AS deploy
FROM ({versions}) WHERE first_seen >= '{from}' AND first_seen < '{to}'),
named AS (
SELECT dimension, value, string_agg(deploy, ', ' ORDER BY first_seen, deploy) AS deploys
FROM (SELECT DISTINCT k.dimension, k.value, d.deploy, d.first_seen
FROM keyed k JOIN deployed d ON k.service_name = d.service_name)
GROUP BY dimension, value)
SELECT j.dimension, j.value, j.calls, j.previous_calls,
j.calls * 1.0 / nullif(t.now_total, 0) AS share,
j.previous_calls * 1.0 / nullif(t.before_total, 0) AS previous_share,
coalesce(j.calls * 1.0 / nullif(t.now_total, 0), 0.0)
- coalesce(j.previous_calls * 1.0 / nullif(t.before_total, 0), 0.0) AS share_change,
n.deploys
FROM joined j CROSS JOIN totals t
LEFT JOIN named n ON n.dimension = j.dimension AND (n.value IS NOT DISTINCT FROM j.value)
ORDER BY abs(share_change) DESC, j.dimension, j.value
