//! Client and server together, in one process, on 127.0.0.1. Each test runs ≤ 2 s.
use std::{net::SocketAddr, sync::Arc, time::Duration};

use tokio::{
    io::{AsyncReadExt, AsyncWriteExt},
    net::{TcpListener, TcpStream},
    task::JoinHandle,
};

use super::{
    ClientOptions, Mode, Report, ServerStats, bind, client,
    protocol::{HEADER_LEN, Header},
    serve,
};

struct TestServer {
    addr: SocketAddr,
    stats: Arc<ServerStats>,
    task: JoinHandle<()>,
}

impl Drop for TestServer {
    fn drop(&mut self) {
        self.task.abort();
    }
}

fn start_server() -> TestServer {
    let listener = bind("127.0.0.1:0".parse().unwrap()).unwrap();
    let addr = listener.local_addr().unwrap();
    let stats = Arc::new(ServerStats::default());
    let task = tokio::spawn(serve(vec![listener], stats.clone()));
    TestServer { addr, stats, task }
}

fn options(addr: SocketAddr, mode: Mode, duration_ms: u64) -> ClientOptions {
    ClientOptions {
        duration: Duration::from_millis(duration_ms),
        warmup: Duration::ZERO,
        ..ClientOptions::new(addr.to_string(), mode)
    }
}

fn assert_ordered_percentiles(report: &Report) {
    let l = report.latency_us.expect("latency measured");
    assert!(
        0.0 < l.p50 && l.p50 <= l.p90 && l.p90 <= l.p99 && l.p99 <= l.p999 && l.p999 <= l.max,
        "percentiles out of order: {l:?}"
    );
    assert!(l.mean > 0.0 && l.mean <= l.max, "{l:?}");
}

#[tokio::test]
async fn rr_closed_loop_measures_requests_and_latency() {
    let server = start_server();
    let opts = ClientOptions {
        connections: 2,
        warmup: Duration::from_millis(100),
        size: 512,
        ..options(server.addr, Mode::Rr, 400)
    };
    let report = client::run(opts).await.unwrap();
    assert!(report.requests > 100, "{report:?}");
    assert_eq!(report.errors, 0, "{report:?}");
    assert_eq!(report.late, 0);
    assert_eq!(report.bytes, report.requests * 2 * 512);
    assert_eq!(report.duration_s, 0.4);
    assert!((report.requests_per_s - report.requests as f64 / 0.4).abs() < 1e-6);
    assert_ordered_percentiles(&report);
    // Loopback on an idle path: the median is far below a millisecond-scale timer's.
    assert!(report.latency_us.unwrap().p50 < 5_000.0, "{report:?}");
    // Warm-up requests were answered but not counted.
    let answered = server.stats.counts().exchanges;
    assert!(answered > report.requests, "{answered} vs {report:?}");
}

#[tokio::test]
async fn rr_open_loop_keeps_the_rate() {
    let server = start_server();
    let opts = ClientOptions {
        connections: 2,
        rate: Some(500.0),
        ..options(server.addr, Mode::Rr, 1_000)
    };
    let report = client::run(opts).await.unwrap();
    assert!(
        (450..=550).contains(&report.requests),
        "500/s for 1 s gave {} requests: {report:?}",
        report.requests
    );
    assert_eq!(report.errors, 0);
    assert_eq!(report.rate, Some(500.0));
    assert_ordered_percentiles(&report);
}

/// A request/response server that takes `delay` over every answer.
async fn slow_server(delay: Duration) -> (SocketAddr, JoinHandle<()>) {
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let task = tokio::spawn(async move {
        loop {
            let Ok((mut stream, _)) = listener.accept().await else {
                return;
            };
            tokio::spawn(async move {
                let mut header = [0u8; HEADER_LEN];
                stream.read_exact(&mut header).await?;
                let Ok(Header::RequestResponse { size, exchanges }) = Header::decode(&header)
                else {
                    return Ok(());
                };
                let mut message = vec![0u8; size as usize];
                let mut answered = 0;
                while exchanges == 0 || answered < exchanges {
                    if stream.read_exact(&mut message).await.is_err() {
                        break;
                    }
                    tokio::time::sleep(delay).await;
                    stream.write_all(&message).await?;
                    answered += 1;
                }
                stream.shutdown().await
            });
        }
    });
    (addr, task)
}

#[tokio::test]
async fn open_loop_charges_queueing_to_latency() {
    // 200 requests/s on one connection to a server that needs 20 ms per answer: it can
    // do 50/s, so requests queue. A closed-loop view would say "20 ms"; measured from
    // the schedule, latency grows with the queue.
    let (addr, task) = slow_server(Duration::from_millis(20)).await;
    let opts = ClientOptions {
        rate: Some(200.0),
        size: 64,
        ..options(addr, Mode::Rr, 500)
    };
    let report = client::run(opts).await.unwrap();
    task.abort();
    let latency = report.latency_us.unwrap();
    assert!(
        (15..=30).contains(&report.requests),
        "capacity is ~25 in 0.5 s: {report:?}"
    );
    assert!(report.late + 1 >= report.requests, "{report:?}");
    assert_eq!(
        report.requests + report.unsent,
        100,
        "all 100 scheduled requests are either done or unsent: {report:?}"
    );
    assert!(latency.p50 > 80_000.0, "queueing not charged: {latency:?}");
    assert!(latency.max > 250_000.0, "{latency:?}");
}

#[tokio::test]
async fn bulk_counts_what_the_server_acknowledged() {
    let server = start_server();
    let opts = ClientOptions {
        connections: 2,
        ..options(server.addr, Mode::Bulk, 300)
    };
    let report = client::run(opts).await.unwrap();
    let sunk = server.stats.counts().sink_bytes;
    assert_eq!(report.errors, 0, "{report:?}");
    assert_eq!(report.requests, 2, "two streams acknowledged: {report:?}");
    assert!(report.bytes > 1 << 20, "{report:?}");
    assert_eq!(report.bytes, sunk);
    assert!(
        report.duration_s >= 0.3 && report.duration_s < 1.0,
        "{report:?}"
    );
    let throughput = report.bytes as f64 / report.duration_s;
    assert!((report.throughput_bytes_per_s - throughput).abs() < 1.0);
    assert!(report.latency_us.is_none());
}

#[tokio::test]
async fn bulk_leaves_the_warmup_out() {
    let server = start_server();
    let opts = ClientOptions {
        warmup: Duration::from_millis(200),
        ..options(server.addr, Mode::Bulk, 200)
    };
    let report = client::run(opts).await.unwrap();
    let sunk = server.stats.counts().sink_bytes;
    assert_eq!(report.requests, 1);
    assert!(
        report.bytes > 0 && report.bytes < sunk,
        "{} measured of {sunk}",
        report.bytes
    );
}

#[tokio::test]
async fn connect_mode_counts_connections() {
    let server = start_server();
    let opts = ClientOptions {
        connections: 2,
        size: 100,
        ..options(server.addr, Mode::Connect, 300)
    };
    let report = client::run(opts).await.unwrap();
    assert!(report.requests > 20, "{report:?}");
    assert_eq!(report.errors, 0, "{report:?}");
    assert_eq!(report.bytes, report.requests * 200);
    assert_ordered_percentiles(&report);
    let counts = server.stats.counts();
    // The probe, then one connection per measured request (no warm-up here).
    assert_eq!(counts.connections, 1 + report.requests, "{counts:?}");
    assert_eq!(counts.exchanges, 1 + report.requests, "{counts:?}");
    assert_eq!(counts.errors, 0, "{counts:?}");
}

#[tokio::test]
async fn hold_mode_holds_every_connection_at_once_until_released() {
    let server = start_server();
    let opts = ClientOptions {
        connections: 300,
        size: 64,
        ..options(server.addr, Mode::Hold, 60_000)
    };
    let release = opts.release.clone();
    let run = tokio::spawn(client::run(opts));
    // All of them open at once (and the probe, closed), then released long before the
    // 60 s hold is up. (The server counts exchanges when a connection ends.)
    let deadline = tokio::time::Instant::now() + Duration::from_secs(5);
    while server.stats.counts().connections < 1 + 300 {
        assert!(
            tokio::time::Instant::now() < deadline,
            "{:?}",
            server.stats.counts()
        );
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    tokio::time::sleep(Duration::from_millis(200)).await;
    assert_eq!(server.stats.counts().connections, 1 + 300);
    assert_eq!(server.stats.counts().exchanges, 1);
    assert!(!run.is_finished());
    release.cancel();
    let report = tokio::time::timeout(Duration::from_secs(5), run)
        .await
        .expect("the hold ends once released")
        .unwrap()
        .unwrap();
    assert_eq!(report.mode, Mode::Hold);
    assert_eq!(report.requests, 300, "{report:?}");
    assert_eq!(report.errors, 0, "{report:?}");
    assert_eq!(report.bytes, 300 * 2 * 2 * 64);
    assert_ordered_percentiles(&report);
    assert!(report.duration_s < 10.0, "{report:?}");
    let counts = server.stats.counts();
    assert_eq!(counts.exchanges, 1 + 2 * 300, "{counts:?}");
    assert_eq!(counts.errors, 0, "{counts:?}");
}

/// Sends `bytes`, then reads until the server closes; true if it closed without
/// answering (EOF or reset).
async fn closed_without_answer(addr: SocketAddr, bytes: &[u8]) -> bool {
    let mut stream = TcpStream::connect(addr).await.unwrap();
    stream.write_all(bytes).await.unwrap();
    let _ = stream.shutdown().await;
    let mut buf = [0u8; 64];
    matches!(
        tokio::time::timeout(Duration::from_secs(1), stream.read(&mut buf)).await,
        Ok(Ok(0) | Err(_))
    )
}

#[tokio::test]
async fn http_mode_gets_bodies_of_the_size_over_keep_alive() {
    let server = start_server();
    let opts = ClientOptions {
        connections: 3,
        size: 1024,
        ..options(server.addr, Mode::Http, 300)
    };
    let report = client::run(opts).await.unwrap();
    assert!(report.requests > 50, "{report:?}");
    assert_eq!(report.errors, 0, "{report:?}");
    assert_eq!(report.bytes, report.requests * 1024);
    assert_ordered_percentiles(&report);
    let counts = server.stats.counts();
    // The probe's connection and the three kept alive: no connection per request.
    assert_eq!(counts.connections, 4, "{counts:?}");
    assert!(
        counts.exchanges >= report.requests,
        "{counts:?} vs {report:?}"
    );
    assert_eq!(counts.errors, 0, "{counts:?}");
}

#[tokio::test]
async fn http_requests_the_server_cannot_serve_get_a_400_and_a_close() {
    let server = start_server();
    for (i, request) in [
        &b"GET / HTTP/1.1\r\nHost: x\r\n\r\n"[..],
        b"GET /1 HTTP/1.1\r\nContent-Length: 3\r\n\r\nabc",
    ]
    .into_iter()
    .enumerate()
    {
        let mut stream = TcpStream::connect(server.addr).await.unwrap();
        stream.write_all(request).await.unwrap();
        let mut answer = Vec::new();
        tokio::time::timeout(Duration::from_secs(1), stream.read_to_end(&mut answer))
            .await
            .unwrap()
            .unwrap();
        assert!(
            answer.starts_with(b"HTTP/1.1 400 "),
            "case {i}: {}",
            answer.escape_ascii()
        );
    }
    // A good request then a close, on one connection: served, then closed cleanly.
    let mut stream = TcpStream::connect(server.addr).await.unwrap();
    stream
        .write_all(
            b"GET /5 HTTP/1.1\r\nHost: x\r\n\r\nGET /2 HTTP/1.1\r\nConnection: close\r\n\r\n",
        )
        .await
        .unwrap();
    let mut answer = Vec::new();
    stream.read_to_end(&mut answer).await.unwrap();
    let text = String::from_utf8(answer).unwrap();
    assert_eq!(text.matches("HTTP/1.1 200 OK").count(), 2, "{text}");
    assert!(
        text.contains("Content-Length: 5\r\n") && text.ends_with("\r\n\r\nZZ"),
        "{text}"
    );
    let counts = server.stats.counts();
    assert_eq!((counts.errors, counts.exchanges), (2, 2), "{counts:?}");
}

#[tokio::test]
async fn bad_headers_are_closed_counted_and_others_still_served() {
    let server = start_server();
    let rr_header = |size: u32| {
        Header::RequestResponse { size, exchanges: 0 }
            .encode()
            .to_vec()
    };
    let mut bad_version = rr_header(8);
    bad_version[4] = 9;
    let cases: Vec<Vec<u8>> = vec![
        b"PUT / HTTP/1.1\r\n\r\n".to_vec(), // HTTP, but not a GET
        b"ORLG".to_vec(),                   // cut short
        bad_version,
        rr_header(0),
        rr_header(u32::MAX),
    ];
    for (i, bytes) in cases.iter().enumerate() {
        assert!(closed_without_answer(server.addr, bytes).await, "case {i}");
    }
    // The server counted each before closing.
    assert_eq!(server.stats.counts().errors, cases.len() as u64);
    assert_eq!(server.stats.counts().connections, cases.len() as u64);

    let report = client::run(options(server.addr, Mode::Rr, 100))
        .await
        .unwrap();
    assert!(report.requests > 0 && report.errors == 0, "{report:?}");
    assert_eq!(server.stats.counts().errors, cases.len() as u64);
}

#[tokio::test]
async fn source_and_sink_modes_move_exact_byte_counts() {
    let server = start_server();
    let mut source = TcpStream::connect(server.addr).await.unwrap();
    source
        .write_all(&Header::Source { bytes: 1_000_003 }.encode())
        .await
        .unwrap();
    let mut received = Vec::new();
    source.read_to_end(&mut received).await.unwrap();
    assert_eq!(received.len(), 1_000_003);

    let mut sink = TcpStream::connect(server.addr).await.unwrap();
    sink.write_all(&Header::Sink.encode()).await.unwrap();
    sink.write_all(&vec![7u8; 300_001]).await.unwrap();
    sink.shutdown().await.unwrap();
    let mut answer = Vec::new();
    sink.read_to_end(&mut answer).await.unwrap();
    assert_eq!(answer, 300_001u64.to_be_bytes());

    let counts = server.stats.counts();
    assert_eq!(counts.source_bytes, 1_000_003);
    assert_eq!(counts.sink_bytes, 300_001);
    assert_eq!(counts.errors, 0);
}

#[tokio::test]
async fn a_closed_port_fails_naming_the_target() {
    let port = {
        let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        listener.local_addr().unwrap().port()
    };
    let target = format!("127.0.0.1:{port}");
    let err = client::run(options(target.parse().unwrap(), Mode::Rr, 100))
        .await
        .unwrap_err();
    let message = format!("{err:#}");
    assert!(message.contains(&target), "{message}");
    assert!(message.contains("refused"), "{message}");
}

#[tokio::test]
async fn every_request_failing_is_an_error() {
    // Answers the probe, then drops every other connection at once.
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let task = tokio::spawn(async move {
        let (mut probe, _) = listener.accept().await.unwrap();
        let mut buf = [0u8; HEADER_LEN + 1];
        probe.read_exact(&mut buf).await.unwrap();
        probe.write_all(&buf[HEADER_LEN..]).await.unwrap();
        drop(probe);
        while let Ok((stream, _)) = listener.accept().await {
            drop(stream);
        }
    });
    let err = client::run(options(addr, Mode::Rr, 200)).await.unwrap_err();
    task.abort();
    let message = format!("{err:#}");
    assert!(
        message.contains(&format!("every request to {addr} failed")),
        "{message}"
    );
}

#[test]
fn the_command_line_is_consistent() {
    use clap::{CommandFactory, Parser};
    #[derive(Parser)]
    struct Cli {
        #[command(subcommand)]
        command: super::LoadgenCommand,
    }
    Cli::command().debug_assert();
    let cli = Cli::try_parse_from([
        "x",
        "client",
        "--target",
        "[::1]:9000",
        "--mode",
        "rr",
        "--rate",
        "500",
        "--duration",
        "2.5",
    ])
    .unwrap();
    let super::LoadgenCommand::Client(args) = cli.command else {
        panic!("not a client command")
    };
    assert_eq!(args.duration, Duration::from_millis(2500));
    assert_eq!(args.warmup, Duration::from_secs(1));
    assert_eq!(args.connections, 1);
    assert_eq!(args.size, 1024);
    assert_eq!(args.rate, Some(500.0));
    assert!(Cli::try_parse_from(["x", "client", "--target", "a:1", "--mode", "udp"]).is_err());
    assert!(
        Cli::try_parse_from(["x", "server"]).is_err(),
        "--listen is required"
    );
}
