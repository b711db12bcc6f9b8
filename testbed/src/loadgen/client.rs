//! The load generator's client: [`run`] drives one workload against a server and returns
//! its [`Report`].
//!
//! Time is split into a warm-up (load runs, nothing is counted) and the measured window.
//! A request belongs to the window if it started in it (closed loop) or was scheduled in
//! it (open loop); requests in flight when the window ends are finished and counted.
//! Every worker keeps its own tallies and histogram, merged at the end.
//!
//! Open loop (`rr` with a rate): request `n` is due at `begin + n / rate` and goes to
//! connection `n mod connections`, sent on a precise timer ([`Pacer`]). If that
//! connection is still busy at the due time, the request waits for it ("late") and the
//! wait counts in its latency, so a stall shows in the percentiles instead of quietly
//! slowing the load (coordinated omission). Busy is judged on the ideal timeline: each
//! request's latency is its exchange time (send to answer) plus the time it would have
//! queued had every request gone out exactly when due. So a server stall is charged in
//! full (a request that queued behind a slow one counts from its due time), while the
//! generator's own lateness (a timer that wakes a bit late, a busy CPU) is not charged
//! to the system under test.
use std::{io, net::SocketAddr, sync::Arc, time::Duration};

use anyhow::{Context, bail};
use tokio::{
    io::{AsyncReadExt, AsyncWriteExt},
    net::TcpStream,
    sync::Semaphore,
    task::JoinSet,
    time::{Instant, sleep, timeout},
};
use tokio_util::sync::CancellationToken;

use super::{
    histogram::Latency,
    pacer::Pacer,
    protocol::{
        HEADER_LEN, Header, MAX_HTTP_HEAD, MAX_MESSAGE, http_head_end, http_request,
        parse_http_response,
    },
    report::{Mode, Report},
};

/// Bulk mode's write size.
pub const BULK_WRITE: usize = 64 * 1024;
/// After a failed connect in a closed loop, wait this long before the next try.
const RETRY_PAUSE: Duration = Duration::from_millis(5);
/// At the end, how long to wait for the server to close a persistent connection.
const CLOSE_WAIT: Duration = Duration::from_secs(1);
const PAYLOAD_BYTE: u8 = 0xa5;
/// Hold mode: connections being opened (or closed) at once, so that a burst of
/// thousands does not overflow the listen backlogs on the way.
const HOLD_IN_FLIGHT: usize = 256;

/// What [`run`] does; [`ClientOptions::new`] gives the command line's defaults.
#[derive(Debug, Clone)]
pub struct ClientOptions {
    /// `host:port` or `ip:port`; a name is resolved once, and its first address used.
    pub target: String,
    pub mode: Mode,
    pub duration: Duration,
    pub warmup: Duration,
    pub connections: usize,
    /// Requests per second over all connections (`rr` only); `None`: closed loop.
    pub rate: Option<f64>,
    /// Request/response message size (`rr`, `connect`).
    pub size: u32,
    /// A connect, an exchange or a write that takes longer fails.
    pub timeout: Duration,
    /// Hold mode: cancelling it ends the hold before `duration` is up.
    pub release: CancellationToken,
    /// Print [`WINDOW_START`] and [`WINDOW_END`] on stderr as the measured window starts
    /// and ends (not in `hold` mode), for a caller that samples counters over it.
    pub window_marks: bool,
}

/// The line `window_marks` prints as the measured window starts.
pub const WINDOW_START: &str = "loadgen: measured window starts";
/// The line `window_marks` prints as the measured window ends.
pub const WINDOW_END: &str = "loadgen: measured window ends";

impl ClientOptions {
    pub fn new(target: impl Into<String>, mode: Mode) -> Self {
        Self {
            target: target.into(),
            mode,
            duration: Duration::from_secs(10),
            warmup: Duration::from_secs(1),
            connections: 1,
            rate: None,
            size: 1024,
            timeout: Duration::from_secs(5),
            release: CancellationToken::new(),
            window_marks: false,
        }
    }

    fn validate(&self) -> anyhow::Result<()> {
        if self.connections == 0 {
            bail!("--connections must be at least 1");
        }
        if self.duration.is_zero() {
            bail!("--duration must be more than 0");
        }
        if self.size == 0 || self.size > MAX_MESSAGE {
            bail!("--size must be in 1..={MAX_MESSAGE}");
        }
        if self.timeout.is_zero() {
            bail!("--timeout must be more than 0");
        }
        match self.rate {
            Some(rate) if !(rate.is_finite() && rate > 0.0) => {
                bail!("--rate must be a positive number of requests per second")
            }
            Some(_) if self.mode != Mode::Rr => bail!("--rate applies to --mode rr only"),
            _ => Ok(()),
        }
    }
}

/// Drives the workload and reports it. Fails, naming the target, if it cannot be
/// resolved or reached (or does not answer as a loadgen server), or if every request of
/// the measured window failed.
pub async fn run(opts: ClientOptions) -> anyhow::Result<Report> {
    opts.validate()?;
    let target = opts.target.clone();
    let addr = resolve(&target).await?;
    let named = if addr.to_string() == target {
        target.clone()
    } else {
        format!("{target} ({addr})")
    };
    probe(addr, opts.timeout)
        .await
        .with_context(|| format!("cannot reach the loadgen server at {named}"))?;
    if opts.mode == Mode::Hold {
        return hold(opts, addr, &named).await;
    }

    // Persistent connections are opened before the clock starts.
    let mut setup = Tally::default();
    let mut streams: Vec<Option<TcpStream>> = Vec::new();
    if matches!(opts.mode, Mode::Rr | Mode::Bulk | Mode::Http) {
        let header = match opts.mode {
            Mode::Bulk => Some(Header::Sink),
            Mode::Http => None,
            _ => Some(Header::RequestResponse {
                size: opts.size,
                exchanges: 0,
            }),
        };
        let mut opening = JoinSet::new();
        for id in 0..opts.connections {
            let wait = opts.timeout;
            opening.spawn(async move { (id, open(addr, header, wait).await) });
        }
        streams.resize_with(opts.connections, || None);
        while let Some(joined) = opening.join_next().await {
            let (id, result) = joined.context("a connection task failed")?;
            match result {
                Ok(stream) => streams[id] = Some(stream),
                Err(err) => setup.error(format!("connect: {err}")),
            }
        }
        if streams.iter().all(Option::is_none) {
            bail!(
                "cannot connect to {named}: {}",
                setup.first_error.unwrap_or_default()
            );
        }
    }

    let begin = Instant::now();
    let measure = begin + opts.warmup;
    let window = Window {
        measure,
        end: measure + opts.duration,
        begin,
    };
    // Awaited below, so the end is marked even when the workers finish before its timer.
    let marks = opts.window_marks.then(|| {
        tokio::spawn(async move {
            tokio::time::sleep_until(window.measure).await;
            eprintln!("{WINDOW_START}");
            tokio::time::sleep_until(window.end).await;
            eprintln!("{WINDOW_END}");
        })
    });
    let ctx = Arc::new(Ctx {
        opts: opts.clone(),
        addr,
        window,
    });
    let mut workers = JoinSet::new();
    match opts.mode {
        Mode::Rr => {
            for (id, stream) in streams.into_iter().enumerate() {
                workers.spawn(rr_worker(ctx.clone(), id, stream));
            }
        }
        Mode::Bulk => {
            for stream in streams {
                workers.spawn(bulk_worker(ctx.clone(), stream));
            }
        }
        Mode::Connect => {
            for _ in 0..opts.connections {
                workers.spawn(connect_worker(ctx.clone()));
            }
        }
        Mode::Http => {
            for stream in streams {
                workers.spawn(http_worker(ctx.clone(), stream));
            }
        }
        Mode::Hold => unreachable!("hold mode returned above"),
    }
    let mut total = setup;
    while let Some(joined) = workers.join_next().await {
        total.merge(joined.context("a load worker failed")?);
    }
    if let Some(marks) = marks {
        marks.await.context("the window marker failed")?;
    }

    if total.requests == 0 && total.errors > 0 {
        bail!(
            "every request to {named} failed ({} errors; first: {})",
            total.errors,
            total.first_error.unwrap_or_default()
        );
    }
    let duration = match (opts.mode, total.last_ack) {
        (Mode::Bulk, Some(last)) => last.saturating_duration_since(window.measure),
        _ => opts.duration,
    };
    let seconds = duration.as_secs_f64();
    Ok(Report {
        mode: opts.mode,
        target,
        connections: opts.connections,
        rate: opts.rate,
        size: opts.size,
        duration_s: seconds,
        requests: total.requests,
        errors: total.errors,
        late: total.late,
        unsent: total.unsent,
        bytes: total.bytes,
        throughput_bytes_per_s: total.bytes as f64 / seconds,
        requests_per_s: total.requests as f64 / seconds,
        latency_us: total.latency.summary(),
        first_error: total.first_error,
    })
}

async fn resolve(target: &str) -> anyhow::Result<SocketAddr> {
    let mut addrs = tokio::net::lookup_host(target)
        .await
        .with_context(|| format!("cannot resolve the target {target} (want host:port)"))?;
    addrs
        .next()
        .with_context(|| format!("the target {target} resolves to no address"))
}

/// One 1-byte exchange, the server closing after it: the target is up and speaks the
/// loadgen protocol (and not, say, only a proxy that accepts and drops).
async fn probe(addr: SocketAddr, wait: Duration) -> anyhow::Result<()> {
    let header = Header::RequestResponse {
        size: 1,
        exchanges: 1,
    };
    let mut message = header.encode().to_vec();
    message.push(PAYLOAD_BYTE);
    let exchange = async {
        let mut stream = connect(addr).await?;
        stream.write_all(&message).await?;
        let mut answer = [0u8; 1];
        stream.read_exact(&mut answer).await.map_err(|err| {
            if err.kind() == io::ErrorKind::UnexpectedEof {
                io::Error::other("the connection closed before the server answered")
            } else {
                err
            }
        })?;
        if answer[0] != PAYLOAD_BYTE {
            return Err(io::Error::other(
                "the answer is not an echo (is it an outrider-testbed loadgen server?)",
            ));
        }
        expect_eof(&mut stream).await
    };
    match timeout(wait, exchange).await {
        Ok(result) => Ok(result?),
        Err(_) => bail!("no answer within {} s", wait.as_secs_f64()),
    }
}

async fn connect(addr: SocketAddr) -> io::Result<TcpStream> {
    let stream = TcpStream::connect(addr).await?;
    stream.set_nodelay(true)?;
    Ok(stream)
}

/// A connection with its header sent (HTTP: none).
async fn open(addr: SocketAddr, header: Option<Header>, wait: Duration) -> io::Result<TcpStream> {
    let opening = async {
        let mut stream = connect(addr).await?;
        if let Some(header) = header {
            stream.write_all(&header.encode()).await?;
        }
        Ok(stream)
    };
    timeout(wait, opening)
        .await
        .unwrap_or_else(|_| Err(timed_out(wait)))
}

fn timed_out(wait: Duration) -> io::Error {
    io::Error::new(
        io::ErrorKind::TimedOut,
        format!("timed out after {} s", wait.as_secs_f64()),
    )
}

async fn expect_eof(stream: &mut TcpStream) -> io::Result<()> {
    let mut extra = [0u8; 1];
    match stream.read(&mut extra).await? {
        0 => Ok(()),
        _ => Err(io::Error::other("the server sent more than the answer")),
    }
}

/// Half-closes and waits (briefly) for the server's close, so it sees a clean end.
async fn close(mut stream: TcpStream) {
    let _ = timeout(CLOSE_WAIT, async {
        stream.shutdown().await?;
        let mut sink = [0u8; 1024];
        while stream.read(&mut sink).await? > 0 {}
        io::Result::Ok(())
    })
    .await;
}

#[derive(Debug, Clone, Copy)]
struct Window {
    /// Start of the warm-up (and of the open-loop schedule).
    begin: Instant,
    /// Start of the measured window.
    measure: Instant,
    end: Instant,
}

struct Ctx {
    opts: ClientOptions,
    addr: SocketAddr,
    window: Window,
}

impl Ctx {
    /// When worker `id`'s `k`-th open-loop request is due.
    fn due(&self, rate: f64, id: usize, k: u64) -> Instant {
        let n = id as f64 + k as f64 * self.opts.connections as f64;
        self.window.begin + Duration::from_secs_f64(n / rate)
    }
}

/// One worker's counts.
#[derive(Debug, Default)]
struct Tally {
    requests: u64,
    errors: u64,
    late: u64,
    unsent: u64,
    bytes: u64,
    latency: Latency,
    first_error: Option<String>,
    /// Bulk: when the last acknowledgement came.
    last_ack: Option<Instant>,
}

impl Tally {
    fn error(&mut self, what: String) {
        self.errors += 1;
        if self.first_error.is_none() {
            self.first_error = Some(what);
        }
    }

    fn merge(&mut self, other: Tally) {
        self.requests += other.requests;
        self.errors += other.errors;
        self.late += other.late;
        self.unsent += other.unsent;
        self.bytes += other.bytes;
        self.latency.merge(&other.latency);
        if self.first_error.is_none() {
            self.first_error = other.first_error;
        }
        self.last_ack = self.last_ack.max(other.last_ack);
    }
}

/// Request/response on one persistent connection (reopened after a failure).
async fn rr_worker(ctx: Arc<Ctx>, id: usize, mut stream: Option<TcpStream>) -> Tally {
    let window = ctx.window;
    let size = ctx.opts.size as usize;
    let header = Header::RequestResponse {
        size: ctx.opts.size,
        exchanges: 0,
    };
    let request = vec![PAYLOAD_BYTE; size];
    let mut answer = vec![0u8; size];
    let mut tally = Tally::default();
    let mut pacer = ctx.opts.rate.map(|_| Pacer::new());
    // Open loop: when the connection would have become free had every request gone out
    // exactly on time (it was opened before the clock started).
    let mut free_at = window.begin;
    let mut k: u64 = 0;
    loop {
        // When the request is due (open loop) or starts (closed loop): it is measured if
        // that is in the window.
        let slot = match (ctx.opts.rate, pacer.as_mut()) {
            (Some(rate), Some(pacer)) => {
                let due = ctx.due(rate, id, k);
                if due >= window.end {
                    break;
                }
                if Instant::now() >= window.end {
                    // Backed up past the end: what is still due in the window is unsent.
                    let mut j = k;
                    loop {
                        let due = ctx.due(rate, id, j);
                        if due >= window.end {
                            break;
                        }
                        tally.unsent += u64::from(due >= window.measure);
                        j += 1;
                    }
                    break;
                }
                k += 1;
                pacer.sleep_until(due).await;
                due
            }
            _ => {
                let now = Instant::now();
                if now >= window.end {
                    break;
                }
                now
            }
        };
        let measured = slot >= window.measure;
        let sent = Instant::now();
        let result = timeout(ctx.opts.timeout, async {
            let s = match stream.as_mut() {
                Some(s) => s,
                None => stream.insert(open(ctx.addr, Some(header), ctx.opts.timeout).await?),
            };
            s.write_all(&request).await?;
            s.read_exact(&mut answer).await?;
            io::Result::Ok(())
        })
        .await
        .unwrap_or_else(|_| Err(timed_out(ctx.opts.timeout)));
        let service = sent.elapsed();
        // Open loop: the time it waited for its connection, on the ideal schedule.
        let queued = free_at.saturating_duration_since(slot);
        free_at = free_at.max(slot) + service;
        match result {
            Ok(()) => {
                if measured {
                    tally.requests += 1;
                    tally.late += u64::from(!queued.is_zero());
                    tally.bytes += 2 * size as u64;
                    tally.latency.record(queued + service);
                }
            }
            Err(err) => {
                if measured {
                    tally.error(format!("request/response: {err}"));
                }
                stream = None;
                if ctx.opts.rate.is_none() {
                    sleep(RETRY_PAUSE).await;
                }
            }
        }
    }
    if let Some(s) = stream {
        close(s).await;
    }
    tally
}

/// HTTP/1.1 GETs on one keep-alive connection, closed loop (reopened after a failure).
async fn http_worker(ctx: Arc<Ctx>, mut stream: Option<TcpStream>) -> Tally {
    let window = ctx.window;
    let request = http_request(&ctx.addr.to_string(), ctx.opts.size);
    let mut buf = vec![0u8; 4096];
    let mut tally = Tally::default();
    loop {
        let start = Instant::now();
        if start >= window.end {
            break;
        }
        let result = timeout(ctx.opts.timeout, async {
            let s = match stream.as_mut() {
                Some(s) => s,
                None => stream.insert(connect(ctx.addr).await?),
            };
            s.write_all(&request).await?;
            http_response(s, &mut buf).await
        })
        .await
        .unwrap_or_else(|_| Err(timed_out(ctx.opts.timeout)));
        let done = Instant::now();
        let measured = start >= window.measure;
        match result {
            Ok(body) => {
                if measured {
                    tally.requests += 1;
                    tally.bytes += body;
                    tally.latency.record(done - start);
                }
            }
            Err(err) => {
                if measured {
                    tally.error(format!("HTTP request: {err}"));
                }
                stream = None;
                sleep(RETRY_PAUSE).await;
            }
        }
    }
    if let Some(s) = stream {
        close(s).await;
    }
    tally
}

/// Reads one HTTP response (a 200 with a Content-Length) and returns its body's length.
/// The client does not pipeline, so nothing may follow the body.
async fn http_response(stream: &mut TcpStream, buf: &mut Vec<u8>) -> io::Result<u64> {
    let mut filled = 0;
    let end = loop {
        if let Some(end) = http_head_end(&buf[..filled]) {
            break end;
        }
        if filled == buf.len() {
            if buf.len() >= MAX_HTTP_HEAD {
                return Err(io::Error::other("a response head over 16 KiB"));
            }
            buf.resize(buf.len() * 2, 0);
        }
        let n = stream.read(&mut buf[filled..]).await?;
        if n == 0 {
            return Err(io::ErrorKind::UnexpectedEof.into());
        }
        filled += n;
    };
    let length = parse_http_response(&buf[..end]).map_err(io::Error::other)?;
    let mut left = length
        .checked_sub((filled - end) as u64)
        .ok_or_else(|| io::Error::other("the server sent more than the response"))?;
    while left > 0 {
        let want = usize::try_from(left).unwrap_or(usize::MAX).min(buf.len());
        let n = stream.read(&mut buf[..want]).await?;
        if n == 0 {
            return Err(io::ErrorKind::UnexpectedEof.into());
        }
        left -= n as u64;
    }
    Ok(length)
}

/// A new connection per exchange; the server closes first (exchanges = 1), so this
/// side does not collect TIME_WAIT sockets and run out of ports.
async fn connect_worker(ctx: Arc<Ctx>) -> Tally {
    let window = ctx.window;
    let size = ctx.opts.size as usize;
    let mut message = Vec::with_capacity(HEADER_LEN + size);
    message.extend_from_slice(
        &Header::RequestResponse {
            size: ctx.opts.size,
            exchanges: 1,
        }
        .encode(),
    );
    message.resize(HEADER_LEN + size, PAYLOAD_BYTE);
    let mut answer = vec![0u8; size];
    let mut tally = Tally::default();
    loop {
        let start = Instant::now();
        if start >= window.end {
            break;
        }
        let result = timeout(ctx.opts.timeout, async {
            let mut stream = connect(ctx.addr).await?;
            stream.write_all(&message).await?;
            stream.read_exact(&mut answer).await?;
            expect_eof(&mut stream).await
        })
        .await
        .unwrap_or_else(|_| Err(timed_out(ctx.opts.timeout)));
        let done = Instant::now();
        let measured = start >= window.measure;
        match result {
            Ok(()) => {
                if measured {
                    tally.requests += 1;
                    tally.bytes += 2 * size as u64;
                    tally.latency.record(done - start);
                }
            }
            Err(err) => {
                if measured {
                    tally.error(format!("connection: {err}"));
                }
                sleep(RETRY_PAUSE).await;
            }
        }
    }
    tally
}

/// Streams to the sink until the window ends, then half-closes and waits for the
/// server's count. A broken stream is counted and replaced by a new one.
async fn bulk_worker(ctx: Arc<Ctx>, mut first: Option<TcpStream>) -> Tally {
    let window = ctx.window;
    let wait = ctx.opts.timeout;
    let chunk = vec![PAYLOAD_BYTE; BULK_WRITE];
    let mut tally = Tally::default();
    loop {
        let started = Instant::now();
        if started >= window.end {
            break;
        }
        let stream = match first.take() {
            Some(s) => Ok(s),
            None => open(ctx.addr, Some(Header::Sink), wait).await,
        };
        let mut stream = match stream {
            Ok(s) => s,
            Err(err) => {
                if Instant::now() >= window.measure {
                    tally.error(format!("connect: {err}"));
                }
                sleep(RETRY_PAUSE).await;
                continue;
            }
        };
        let mut written: u64 = 0;
        // Bytes written before the measured window began: not counted.
        let mut before_window: Option<u64> = (started >= window.measure).then_some(0);
        let result = async {
            loop {
                let now = Instant::now();
                if before_window.is_none() && now >= window.measure {
                    before_window = Some(written);
                }
                if now >= window.end {
                    break;
                }
                let n = timeout(wait, stream.write(&chunk))
                    .await
                    .unwrap_or_else(|_| Err(timed_out(wait)))?;
                if n == 0 {
                    return Err(io::ErrorKind::WriteZero.into());
                }
                written += n as u64;
            }
            let ack = timeout(wait, async {
                stream.shutdown().await?;
                let mut count = [0u8; 8];
                stream.read_exact(&mut count).await?;
                expect_eof(&mut stream).await?;
                io::Result::Ok(u64::from_be_bytes(count))
            })
            .await
            .unwrap_or_else(|_| Err(timed_out(wait)))?;
            io::Result::Ok(ack)
        }
        .await;
        match result {
            Ok(ack) => {
                let done = Instant::now();
                tally.bytes += ack.saturating_sub(before_window.unwrap_or(ack));
                tally.last_ack = tally.last_ack.max(Some(done));
                if ack == written {
                    tally.requests += 1;
                } else {
                    tally.error(format!(
                        "the server acknowledged {ack} of {written} bytes sent"
                    ));
                }
            }
            Err(err) => {
                if Instant::now() >= window.measure {
                    tally.error(format!("stream: {err}"));
                }
            }
        }
    }
    tally
}

/// Hold mode: opens `connections` connections (at most [`HOLD_IN_FLIGHT`] at once), one
/// exchange on each; says so on stderr ("holding N connections …") once all are open;
/// holds them until `duration` is up or `release` is cancelled; then one more exchange
/// on each, a half-close, and the server's close.
async fn hold(opts: ClientOptions, addr: SocketAddr, named: &str) -> anyhow::Result<Report> {
    let started = Instant::now();
    let size = opts.size as usize;
    let header = Header::RequestResponse {
        size: opts.size,
        exchanges: 0,
    };
    let in_flight = Arc::new(Semaphore::new(HOLD_IN_FLIGHT));
    let mut total = Tally::default();

    let mut opening = JoinSet::new();
    for _ in 0..opts.connections {
        let in_flight = in_flight.clone();
        let wait = opts.timeout;
        opening.spawn(async move {
            let _permit = in_flight.acquire_owned().await;
            let begin = Instant::now();
            let result = timeout(wait, async {
                let mut stream = open(addr, Some(header), wait).await?;
                exchange(&mut stream, size).await?;
                io::Result::Ok(stream)
            })
            .await
            .unwrap_or_else(|_| Err(timed_out(wait)));
            (begin.elapsed(), result)
        });
    }
    let mut held = Vec::with_capacity(opts.connections);
    while let Some(joined) = opening.join_next().await {
        let (took, result) = joined.context("a connection task failed")?;
        match result {
            Ok(stream) => {
                total.latency.record(took);
                total.bytes += 2 * size as u64;
                held.push(stream);
            }
            Err(err) => total.error(format!("open: {err}")),
        }
    }
    if held.is_empty() {
        bail!(
            "cannot hold any connection to {named}: {}",
            total.first_error.unwrap_or_default()
        );
    }
    eprintln!(
        "holding {} connections to {named} ({} failed to open) after {:.1} s",
        held.len(),
        total.errors,
        started.elapsed().as_secs_f64()
    );
    tokio::select! {
        () = sleep(opts.duration) => {}
        () = opts.release.cancelled() => {}
    }

    let mut closing = JoinSet::new();
    for mut stream in held {
        let in_flight = in_flight.clone();
        let wait = opts.timeout;
        closing.spawn(async move {
            let _permit = in_flight.acquire_owned().await;
            timeout(wait, async {
                exchange(&mut stream, size).await?;
                stream.shutdown().await?;
                expect_eof(&mut stream).await
            })
            .await
            .unwrap_or_else(|_| Err(timed_out(wait)))
        });
    }
    while let Some(joined) = closing.join_next().await {
        match joined.context("a connection task failed")? {
            Ok(()) => {
                total.requests += 1;
                total.bytes += 2 * size as u64;
            }
            Err(err) => total.error(format!("after holding: {err}")),
        }
    }
    let seconds = started.elapsed().as_secs_f64();
    Ok(Report {
        mode: Mode::Hold,
        target: opts.target,
        connections: opts.connections,
        rate: None,
        size: opts.size,
        duration_s: seconds,
        requests: total.requests,
        errors: total.errors,
        late: 0,
        unsent: 0,
        bytes: total.bytes,
        throughput_bytes_per_s: total.bytes as f64 / seconds,
        requests_per_s: total.requests as f64 / seconds,
        latency_us: total.latency.summary(),
        first_error: total.first_error,
    })
}

/// One request and its full answer.
async fn exchange(stream: &mut TcpStream, size: usize) -> io::Result<()> {
    let request = vec![PAYLOAD_BYTE; size];
    stream.write_all(&request).await?;
    let mut answer = vec![0u8; size];
    stream.read_exact(&mut answer).await?;
    if answer != request {
        return Err(io::Error::other("the answer is not an echo of the request"));
    }
    Ok(())
}
