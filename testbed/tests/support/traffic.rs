//! Continuous traffic from a pod while agents change hands: a Python program that opens
//! connections to echo servers all along (and holds one long connection), and what it
//! reports — every attempt, failed or not — for the restart and upgrade tests.
use std::{
    net::SocketAddr,
    time::{Duration, Instant},
};

use serde_json::Value;

/// A Python program for the client pod: for `seconds`, a new connection to each target
/// every `every_ms` (a line out, the same back) and one long connection to the first
/// target echoing a block of lines every 50 ms. (Lines, so that protocol detection sees
/// at once that this is not HTTP.) Prints one JSON object: the attempts (time since
/// start, target, error or null, how long it took) and the long connection's blocks.
pub fn traffic(targets: &[SocketAddr], seconds: u32, every_ms: u32, long: bool) -> String {
    let targets: Vec<String> = targets
        .iter()
        .map(|t| format!("('{}', {})", t.ip(), t.port()))
        .collect();
    format!(
        "import json, socket, threading, time\n\
         targets = [{targets}]\n\
         start = time.time()\n\
         end = start + {seconds}\n\
         attempts = []\n\
         long_blocks = [0, None]\n\
         def exact(s, n):\n\
         \x20   got = b''\n\
         \x20   while len(got) < n:\n\
         \x20       d = s.recv(n - len(got))\n\
         \x20       if not d: raise OSError('closed after %d bytes' % len(got))\n\
         \x20       got += d\n\
         \x20   return got\n\
         def hold():\n\
         \x20   try:\n\
         \x20       s = socket.create_connection(targets[0], timeout=5)\n\
         \x20       while time.time() < end:\n\
         \x20           block = (b'%07d\\n' % long_blocks[0]) * 64\n\
         \x20           s.sendall(block)\n\
         \x20           if exact(s, len(block)) != block: raise OSError('corrupted')\n\
         \x20           long_blocks[0] += 1\n\
         \x20           time.sleep(0.05)\n\
         \x20       s.close()\n\
         \x20   except Exception as e:\n\
         \x20       long_blocks[1] = '%.3f: %r' % (time.time() - start, e)\n\
         t = threading.Thread(target=hold)\n\
         if {long}: t.start()\n\
         n = 0\n\
         while time.time() < end:\n\
         \x20   for target in targets:\n\
         \x20       t0 = time.time()\n\
         \x20       err = None\n\
         \x20       try:\n\
         \x20           s = socket.create_connection(target, timeout=5)\n\
         \x20           msg = b'%07d\\n' % n\n\
         \x20           s.sendall(msg)\n\
         \x20           if exact(s, 8) != msg: err = 'corrupted'\n\
         \x20           s.close()\n\
         \x20       except Exception as e:\n\
         \x20           err = repr(e)\n\
         \x20       attempts.append([t0 - start, '%s:%d' % target, err, time.time() - t0])\n\
         \x20       n += 1\n\
         \x20   time.sleep({every} / 1000)\n\
         if {long}: t.join()\n\
         print(json.dumps({{'attempts': attempts, 'long_blocks': long_blocks[0], 'long_error': long_blocks[1]}}))\n",
        targets = targets.join(", "),
        long = if long { "True" } else { "False" },
        every = every_ms,
    )
}

pub struct Attempt {
    pub at: f64,
    pub target: String,
    pub error: Option<String>,
    pub took: f64,
}

pub fn attempts(v: &Value) -> Vec<Attempt> {
    v["attempts"]
        .as_array()
        .expect("attempts")
        .iter()
        .map(|a| Attempt {
            at: a[0].as_f64().unwrap(),
            target: a[1].as_str().unwrap().to_string(),
            error: a[2].as_str().map(String::from),
            took: a[3].as_f64().unwrap(),
        })
        .collect()
}

/// Waits for the traffic program and parses what it printed.
pub fn finish(traffic: super::Background) -> Value {
    let mut traffic = traffic;
    let deadline = Instant::now() + Duration::from_secs(90);
    while traffic.child.try_wait().unwrap().is_none() {
        assert!(Instant::now() < deadline, "the traffic program hangs");
        std::thread::sleep(Duration::from_millis(100));
    }
    let out = traffic.output();
    let line = out
        .lines()
        .rev()
        .find(|l| l.starts_with('{'))
        .unwrap_or_else(|| panic!("no report from the traffic program:\n{out}"));
    serde_json::from_str(line).unwrap()
}
