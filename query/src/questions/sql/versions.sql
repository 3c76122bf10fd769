SELECT service_name, deployment_environment, service_version, min(first_time) AS first_seen,
service_version || coalesce(' (' || deployment_environment || ')', '') || ' at '
|| to_char(min(first_time), '%Y-%m-%dT%H:%M:%SZ') AS deploy
FROM {lookback_minutes} WHERE service_version IS NOT NULL
GROUP BY service_name, deployment_environment, service_version
