SELECT client_id, service_name, endpoint, http_status_code, count(*) AS calls,
max(time) AS last_seen
FROM api_calls WHERE {window} AND http_status_code IN (401, 403, 429)
GROUP BY client_id, service_name, endpoint, http_status_code
ORDER BY calls DESC, client_id, service_name, endpoint, http_status_code
