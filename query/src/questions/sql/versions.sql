SELECT service_name, deployment_environment, service_version, min(first_time) AS first_seen
FROM {lookback_minutes} WHERE service_version IS NOT NULL
GROUP BY service_name, deployment_environment, service_version
