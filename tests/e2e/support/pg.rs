//! Connecting to the daemon's PostgreSQL port with `psql` and tokio-postgres.

use std::process::{Command, Output};

use tokio_postgres::{Client, NoTls};

use crate::support::daemon::Daemon;

/// Runs `psql -c` for each command against the daemon; `password` goes in `PGPASSWORD`.
pub(crate) fn psql(daemon: &Daemon, password: Option<&str>, commands: &[&str]) -> Output {
    let (host, port) = daemon.pg_addr.rsplit_once(':').unwrap();
    let mut psql = Command::new("psql");
    psql.arg(format!(
        "host={host} port={port} user=oncall dbname=apiscope sslmode=disable connect_timeout=10"
    ))
    .args(["-X", "-A", "-t", "-v", "ON_ERROR_STOP=1"])
    .env_remove("PGPASSWORD")
    .env("PGAPPNAME", "e2e");
    for command in commands {
        psql.args(["-c", command]);
    }
    if let Some(password) = password {
        psql.env("PGPASSWORD", password);
    }
    psql.output().expect("psql is installed")
}

/// A tokio-postgres connection to the daemon.
pub(crate) async fn connect(
    daemon: &Daemon,
    password: Option<&str>,
) -> Result<Client, tokio_postgres::Error> {
    let (host, port) = daemon.pg_addr.rsplit_once(':').unwrap();
    let mut config = tokio_postgres::Config::new();
    config
        .host(host)
        .port(port.parse().unwrap())
        .user("grafana")
        .dbname("apiscope")
        .connect_timeout(std::time::Duration::from_secs(10));
    if let Some(password) = password {
        config.password(password);
    }
    let (client, connection) = config.connect(NoTls).await?;
    tokio::spawn(connection);
    Ok(client)
}

pub(crate) fn runtime() -> tokio::runtime::Runtime {
    tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap()
}
