//! `outrider wait-enrolled`: what a pod's init container runs to close the window
//! between the pod getting its IP and the node agent enrolling it (traffic the app sends
//! meanwhile is not meshed). It shares the pod's network namespace, so it waits until the
//! agent's outbound listener (`127.0.0.1:15001`) listens there — read from
//! `/proc/net/tcp{,6}`, without connecting, so the agent sees no stray connection. The
//! agent adds the pod to the kernel's enrolled map right after opening its listeners.
use std::{
    process::ExitCode,
    time::{Duration, Instant},
};

/// True when `text` (the contents of /proc/net/tcp or tcp6) has a loopback socket
/// listening on `port`.
pub fn loopback_listening(text: &str, port: u16) -> bool {
    text.lines().skip(1).any(|line| {
        let cells: Vec<&str> = line.split_whitespace().collect();
        let (Some(local), Some(state)) = (cells.get(1), cells.get(3)) else {
            return false;
        };
        let Some((addr, p)) = local.split_once(':') else {
            return false;
        };
        let loopback = addr == "0100007F" || addr == "00000000000000000000000001000000";
        *state == "0A" && loopback && u16::from_str_radix(p, 16).ok() == Some(port)
    })
}

fn listening(port: u16) -> bool {
    ["/proc/net/tcp", "/proc/net/tcp6"]
        .iter()
        .any(|file| std::fs::read_to_string(file).is_ok_and(|text| loopback_listening(&text, port)))
}

pub fn run(port: u16, timeout: Duration) -> anyhow::Result<ExitCode> {
    let start = Instant::now();
    while !listening(port) {
        if start.elapsed() > timeout {
            anyhow::bail!(
                "the node agent did not enroll this pod within {} s (nothing listens on 127.0.0.1:{port}); is the namespace labelled outrider.io/mode=node and the agent running on this node?",
                timeout.as_secs()
            );
        }
        std::thread::sleep(Duration::from_millis(50));
    }
    println!(
        "enrolled: the node agent listens in this pod (after {} ms)",
        start.elapsed().as_millis()
    );
    Ok(ExitCode::SUCCESS)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn finds_a_loopback_listener_and_nothing_else() {
        let tcp = "  sl  local_address rem_address   st tx_queue rx_queue tr tm->when retrnsmt   uid  timeout inode
   0: 0100007F:3A99 00000000:0000 0A 00000000:00000000 00:00000000 00000000     0        0 1 1 0 100 0 0 10 0
   1: 0B0113C6:1F90 00000000:0000 0A 00000000:00000000 00:00000000 00000000     0        0 2 1 0 100 0 0 10 0
   2: 0100007F:3A98 0100007F:9C40 01 00000000:00000000 00:00000000 00000000     0        0 3 1 0 20 4 30 10 -1
";
        assert!(loopback_listening(tcp, 15001));
        // 15000 only has an established connection; 8080 listens on the pod IP only.
        assert!(!loopback_listening(tcp, 15000));
        assert!(!loopback_listening(tcp, 8080));
        let tcp6 = "  sl  local_address rem_address st
   0: 00000000000000000000000001000000:3A99 00000000000000000000000000000000:0000 0A 0
";
        assert!(loopback_listening(tcp6, 15001));
    }
}
