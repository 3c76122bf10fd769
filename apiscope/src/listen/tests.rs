use super::*;

#[tokio::test]
async fn accepted_connections_send_without_nagle_and_hold_their_place() {
    let tcp = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let mut listener = Listener::new(tcp, QUERY_HTTP, 1, None, false);
    let addr = listener.local_addr().unwrap();
    let client = TcpStream::connect(addr).await.unwrap();
    let connection = listener.accept().await;
    assert_eq!(connection.peer, client.local_addr().unwrap());
    assert!(connection.stream.inner.nodelay().unwrap());
    assert_eq!(listener.open.available_permits(), 0);
    drop(connection);
    assert_eq!(listener.open.available_permits(), 1);
}

#[tokio::test]
async fn a_postgres_client_over_the_limit_reads_sqlstate_53300() {
    let tcp = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let mut listener = Listener::new(tcp, POSTGRES, 1, None, false);
    let addr = listener.local_addr().unwrap();
    let _first = TcpStream::connect(addr).await.unwrap();
    let _held = listener.accept().await;
    let mut second = TcpStream::connect(addr).await.unwrap();
    let accepting = tokio::spawn(async move { listener.accept().await });
    // An SSLRequest is declined, then the start-up packet is answered with the error.
    second
        .write_all(&[0, 0, 0, 8, 4, 210, 22, 47])
        .await
        .unwrap();
    let mut answer = [0u8; 1];
    second.read_exact(&mut answer).await.unwrap();
    assert_eq!(&answer, b"N");
    let startup = [0, 0, 0, 9, 0, 3, 0, 0, 0];
    second.write_all(&startup).await.unwrap();
    let mut error = Vec::new();
    second.read_to_end(&mut error).await.unwrap();
    assert_eq!(error[0], b'E');
    let text = String::from_utf8_lossy(&error);
    assert!(text.contains("C53300"), "{text}");
    assert!(text.contains("pg_max_connections = 1"), "{text}");
    accepting.abort();
}

#[tokio::test]
async fn an_idle_stream_ends_with_an_error_unless_a_request_is_in_progress() {
    let tcp = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let mut listener = Listener::new(tcp, OTLP_GRPC, 4, Some(Duration::from_millis(200)), false);
    let addr = listener.local_addr().unwrap();
    let _client = TcpStream::connect(addr).await.unwrap();
    let mut connection = listener.accept().await;
    let requests = connection.requests();
    let busy = InProgress::enter(&requests);
    let mut buffer = [0u8; 8];
    let waited = tokio::time::timeout(Duration::from_secs(1), connection.stream.read(&mut buffer));
    assert!(
        waited.await.is_err(),
        "a connection with a request in progress is not idle"
    );
    drop(busy);
    let read = connection.stream.read(&mut buffer).await;
    assert_eq!(read.unwrap_err().kind(), io::ErrorKind::TimedOut);
}
