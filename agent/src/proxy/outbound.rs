//! Outbound: the in-pod listeners (127.0.0.1:15001 and [::1]:15001) that the kernel
//! steers the pod's connects to. For each accepted connection: find its original
//! destination, connect there from inside the pod (so the destination sees the pod's IP)
//! with the agent's mark (so it is not steered again), copy, log.
use std::{
    io,
    net::{Ipv4Addr, Ipv6Addr, SocketAddr},
    sync::{Arc, atomic::Ordering},
    time::{Duration, Instant},
};

use tokio::{net::TcpStream, task::JoinHandle};

use super::copy::{self, Counters};
use crate::{
    config::Config,
    dataplane::OrigDstTable,
    netns::Netns,
    telemetry::access::{self, ConnectionRecord, Direction},
};

/// Everything one pod's connections need; shared by its listeners and connections.
pub struct PodProxy {
    /// `namespace/name`.
    pub pod: String,
    pub netns: Arc<Netns>,
    pub orig_dst: OrigDstTable,
    pub mark: u32,
    pub connect_timeout: Duration,
    pub buffer_bytes: usize,
}

impl PodProxy {
    pub fn new(pod: String, netns: Arc<Netns>, orig_dst: OrigDstTable, config: &Config) -> Self {
        Self {
            pod,
            netns,
            orig_dst,
            mark: config.capture.agent_mark,
            connect_timeout: Duration::from_millis(config.proxy.connect_timeout_ms),
            buffer_bytes: config.proxy.buffer_bytes,
        }
    }
}

/// A pod's running listeners. Dropping it closes them; connections already accepted run
/// on to their end.
pub struct PodListeners {
    tasks: Vec<JoinHandle<()>>,
}

impl Drop for PodListeners {
    fn drop(&mut self) {
        for task in &self.tasks {
            task.abort();
        }
    }
}

/// Opens the pod's outbound listeners inside its namespace and starts accepting.
pub fn start(proxy: Arc<PodProxy>, port: u16, backlog: u32) -> io::Result<PodListeners> {
    let addrs = [
        SocketAddr::from((Ipv4Addr::LOCALHOST, port)),
        SocketAddr::from((Ipv6Addr::LOCALHOST, port)),
    ];
    let mut listeners = Vec::with_capacity(addrs.len());
    for addr in addrs {
        let std = proxy.netns.listen(addr, backlog, proxy.mark).map_err(|e| {
            io::Error::new(
                e.kind(),
                format!("listen on {addr} in {}: {e}", proxy.netns.path().display()),
            )
        })?;
        listeners.push(tokio::net::TcpListener::from_std(std)?);
    }
    let tasks = listeners
        .into_iter()
        .map(|listener| tokio::spawn(accept_loop(listener, proxy.clone())))
        .collect();
    Ok(PodListeners { tasks })
}

async fn accept_loop(listener: tokio::net::TcpListener, proxy: Arc<PodProxy>) {
    loop {
        match listener.accept().await {
            Ok((stream, peer)) => {
                tokio::spawn(handle(stream, peer, proxy.clone()));
            }
            Err(err) => {
                // Out of descriptors or memory: back off instead of spinning.
                tracing::warn!(pod = %proxy.pod, error = %err, "accept failed");
                tokio::time::sleep(Duration::from_millis(50)).await;
            }
        }
    }
}

async fn handle(app: TcpStream, peer: SocketAddr, proxy: Arc<PodProxy>) {
    let started = Instant::now();
    let counters = Counters::default();
    let dst = proxy.orig_dst.lookup(proxy.netns.cookie(), peer);
    let mut src = peer;
    let result = match dst {
        None => Err(io::Error::new(
            io::ErrorKind::NotFound,
            "no original destination recorded (not a steered connection)",
        )),
        Some(dst) => match connect(&proxy, dst).await {
            Ok(upstream) => {
                if let Ok(local) = upstream.local_addr() {
                    src = local;
                }
                let _ = app.set_nodelay(true);
                copy::bidirectional(app, upstream, proxy.buffer_bytes, &counters).await
            }
            Err(err) => {
                // Refuse the app's connection as the destination refused ours.
                let _ = socket2::SockRef::from(&app).set_linger(Some(Duration::ZERO));
                Err(err)
            }
        },
    };
    access::log(&ConnectionRecord {
        pod: &proxy.pod,
        direction: Direction::Outbound,
        src,
        dst,
        bytes_sent: counters.forward.load(Ordering::Relaxed),
        bytes_received: counters.backward.load(Ordering::Relaxed),
        duration: started.elapsed(),
        error: result.err().map(|e| e.to_string()),
    });
}

async fn connect(proxy: &PodProxy, dst: SocketAddr) -> io::Result<TcpStream> {
    let socket = proxy.netns.tcp_socket(dst, proxy.mark)?;
    match tokio::time::timeout(proxy.connect_timeout, socket.connect(dst)).await {
        Ok(Ok(stream)) => Ok(stream),
        Ok(Err(err)) => Err(io::Error::new(err.kind(), format!("connect {dst}: {err}"))),
        Err(_) => Err(io::Error::new(
            io::ErrorKind::TimedOut,
            format!("connect {dst}: timed out after {:?}", proxy.connect_timeout),
        )),
    }
}
