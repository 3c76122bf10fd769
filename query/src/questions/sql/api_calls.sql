SELECT time, service_name, endpoint, http_method, http_route, http_status_code,
duration_ms, client_id, api_version, is_error, trace_id, 'span' AS source, error_type,
CAST(attributes['http.request.resend_count'] AS BIGINT) AS resend_count, span_id,
service_version, http_request_body_size AS request_bytes,
http_response_body_size AS response_bytes, deployment_environment
FROM spans WHERE span_kind = 'server'
UNION ALL
SELECT time, service_name, endpoint, http_method, http_route, http_status_code,
duration_ms, client_id, api_version, is_error, trace_id, 'request_log' AS source,
attributes['error_type'] AS error_type,
CAST(attributes['resend_count'] AS BIGINT) AS resend_count,
arrow_cast(NULL, 'Utf8') AS span_id,
coalesce(attributes['service_version'], attributes['service.version']) AS service_version,
request_bytes, response_bytes,
coalesce(attributes['deployment_environment'], attributes['deployment.environment.name'],
attributes['deployment.environment']) AS deployment_environment
FROM requests
UNION ALL
SELECT time, service_name, http_method || ' ' || http_route AS endpoint, http_method,
http_route, http_status_code, duration_ms, client_id, api_version(http_route) AS api_version,
http_status_code >= 500 AS is_error, trace_id, 'log' AS source, error_type,
resend_count, arrow_cast(NULL, 'Utf8') AS span_id, service_version, request_bytes,
response_bytes, deployment_environment
FROM (
SELECT time, service_name, trace_id, service_version,
coalesce(resource_attributes['deployment.environment.name'],
resource_attributes['deployment.environment']) AS deployment_environment,
upper(coalesce(attributes['http.request.method'], attributes['http.method'])) AS http_method,
coalesce(attributes['http.route'], route_template(coalesce(attributes['url.path'],
attributes['http.target'], attributes['http.path']))) AS http_route,
CAST(coalesce(attributes['http.response.status_code'], attributes['http.status_code']) AS INT)
AS http_status_code,
coalesce(CAST(attributes['duration_ms'] AS DOUBLE),
CAST(attributes['http.server.request.duration'] AS DOUBLE) * 1000.0) AS duration_ms,
coalesce(attributes['client.id'], attributes['app.client_id'], attributes['enduser.id'],
attributes['user.id'], attributes['client.address']) AS client_id,
attributes['error.type'] AS error_type,
CAST(attributes['http.request.resend_count'] AS BIGINT) AS resend_count,
CAST(coalesce(attributes['http.request.body.size'], attributes['http.request_content_length'])
AS BIGINT) AS request_bytes,
CAST(coalesce(attributes['http.response.body.size'],
attributes['http.response_content_length']) AS BIGINT) AS response_bytes
FROM logs
WHERE coalesce(attributes['http.request.method'], attributes['http.method']) IS NOT NULL
AND coalesce(attributes['http.response.status_code'], attributes['http.status_code']) IS NOT NULL
AND coalesce(attributes['http.route'], attributes['url.path'], attributes['http.target'],
attributes['http.path']) IS NOT NULL)
