SELECT service_name, endpoint, http_status_code, error_type, count(*) AS calls
FROM api_calls WHERE {window} AND (is_error OR http_status_code >= 400)
GROUP BY service_name, endpoint, http_status_code, error_type
ORDER BY calls DESC, service_name, endpoint, http_status_code
