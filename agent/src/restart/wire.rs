//! The hand-over protocol's messages on the wire: each is a 4-byte little-endian length
//! and a JSON body, sent in one `sendmsg` with its descriptors (SCM_RIGHTS) attached.
use std::{
    io::{self, IoSlice, IoSliceMut},
    os::{
        fd::{AsRawFd, FromRawFd, OwnedFd, RawFd},
        unix::net::UnixStream,
    },
};

use nix::sys::socket::{ControlMessage, ControlMessageOwned, MsgFlags, recvmsg, sendmsg};
use serde::{Deserialize, Serialize};

/// Largest message body accepted: far above what the protocol sends.
const MAX_BODY: usize = 64 * 1024;
/// Most descriptors one message carries: room for a pod's listeners of kinds to come
/// (an agent from before named listeners received at most 8).
pub const MAX_FDS: usize = 64;

/// The names of a pod's listeners from an agent from before named listeners, whose `Pod`
/// messages carry exactly these six descriptors, in this order, and no names.
pub const UNNAMED_LISTENERS: [&str; 6] = [
    "outbound-v4",
    "outbound-v6",
    "inbound-v4",
    "inbound-v6",
    "tunnel-v4",
    "tunnel-v6",
];

#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "type", rename_all = "camelCase")]
pub enum Message {
    /// New agent → running agent: hand your sockets over.
    Take { version: String, pid: u32 },
    /// Running agent → new agent: one pod's listeners, a descriptor for each of
    /// `listeners` (their names, see `proxy::listeners`), in that order. Without
    /// `listeners` (an agent from before named listeners): [`UNNAMED_LISTENERS`]. An agent
    /// from before named listeners ignores the field and takes the descriptors in its
    /// fixed order, which the first six kinds keep.
    Pod {
        key: String,
        netns_cookie: u64,
        #[serde(default, skip_serializing_if = "Option::is_none")]
        listeners: Option<Vec<String>>,
    },
    /// Running agent → new agent: the metrics endpoint's listener (one descriptor).
    Metrics,
    /// Running agent → new agent: that was all.
    End,
    /// New agent → running agent: received; stop accepting.
    Ack,
    /// Running agent → new agent: stopped; its unix sockets are free to bind.
    Released,
    /// Either way: the hand-over is off, and why.
    Refused { reason: String },
}

pub fn send(stream: &UnixStream, message: &Message, fds: &[RawFd]) -> io::Result<()> {
    if fds.len() > MAX_FDS {
        return Err(io::Error::new(
            io::ErrorKind::InvalidInput,
            format!(
                "hand-over: {} descriptors in one message, at most {MAX_FDS}",
                fds.len()
            ),
        ));
    }
    let body = serde_json::to_vec(message).map_err(io::Error::other)?;
    let mut frame = (body.len() as u32).to_le_bytes().to_vec();
    frame.extend_from_slice(&body);
    let iov = [IoSlice::new(&frame)];
    let rights = [ControlMessage::ScmRights(fds)];
    let cmsgs: &[ControlMessage<'_>] = if fds.is_empty() { &[] } else { &rights };
    let sent = sendmsg::<()>(stream.as_raw_fd(), &iov, cmsgs, MsgFlags::empty(), None)?;
    if sent != frame.len() {
        return Err(io::Error::new(
            io::ErrorKind::WriteZero,
            format!("hand-over: sent {sent} of {} bytes", frame.len()),
        ));
    }
    Ok(())
}

/// Receives one message and the descriptors that came with it.
pub fn recv(stream: &UnixStream) -> io::Result<(Message, Vec<OwnedFd>)> {
    let mut buf = vec![0u8; 4 + MAX_BODY];
    let mut cmsg = nix::cmsg_space!([RawFd; MAX_FDS]);
    let (len, fds) = {
        let mut iov = [IoSliceMut::new(&mut buf)];
        let msg = recvmsg::<()>(
            stream.as_raw_fd(),
            &mut iov,
            Some(&mut cmsg),
            MsgFlags::MSG_CMSG_CLOEXEC,
        )?;
        let mut fds = Vec::new();
        for c in msg.cmsgs()? {
            if let ControlMessageOwned::ScmRights(received) = c {
                // SAFETY: the kernel just gave us these descriptors; nobody else owns them.
                fds.extend(
                    received
                        .into_iter()
                        .map(|fd| unsafe { OwnedFd::from_raw_fd(fd) }),
                );
            }
        }
        if msg.flags.contains(MsgFlags::MSG_CTRUNC) {
            return Err(io::Error::new(
                io::ErrorKind::InvalidData,
                "hand-over: descriptors were cut off (more than the protocol sends)",
            ));
        }
        (msg.bytes, fds)
    };
    if len == 0 {
        return Err(io::Error::new(
            io::ErrorKind::UnexpectedEof,
            "hand-over: the other agent closed the connection",
        ));
    }
    if len < 4 {
        return Err(bad("a message shorter than its length"));
    }
    let body_len = u32::from_le_bytes([buf[0], buf[1], buf[2], buf[3]]) as usize;
    if body_len > MAX_BODY || 4 + body_len != len {
        return Err(bad(&format!(
            "a message of {len} bytes announcing a body of {body_len}"
        )));
    }
    let message = serde_json::from_slice(&buf[4..len])
        .map_err(|e| bad(&format!("an unreadable message: {e}")))?;
    Ok((message, fds))
}

/// A `Pod` message's descriptors with their names: `names` as sent, or
/// [`UNNAMED_LISTENERS`] from an agent that sends none. An error when the counts differ.
pub fn name_listeners(
    names: Option<Vec<String>>,
    fds: Vec<OwnedFd>,
) -> Result<Vec<(String, OwnedFd)>, String> {
    let names = names.unwrap_or_else(|| UNNAMED_LISTENERS.map(String::from).to_vec());
    if names.len() != fds.len() {
        return Err(format!(
            "{} sockets for {} listener names",
            fds.len(),
            names.len()
        ));
    }
    Ok(names.into_iter().zip(fds).collect())
}

fn bad(what: &str) -> io::Error {
    io::Error::new(io::ErrorKind::InvalidData, format!("hand-over: {what}"))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn messages_and_descriptors_cross_together() {
        let (a, b) = UnixStream::pair().unwrap();
        let file = tempfile::tempfile().unwrap();
        let message = Message::Pod {
            key: "shop/web".into(),
            netns_cookie: 42,
            listeners: Some(vec!["outbound-v4".into(), "dns-v4".into()]),
        };
        send(&a, &message, &[file.as_raw_fd(), file.as_raw_fd()]).unwrap();
        let (got, fds) = recv(&b).unwrap();
        assert_eq!(got, message);
        assert_eq!(fds.len(), 2);
        // They are the same open file, not copies.
        use std::os::unix::fs::MetadataExt;
        let ino = |fd: &OwnedFd| {
            std::fs::File::from(fd.try_clone().unwrap())
                .metadata()
                .unwrap()
                .ino()
        };
        assert_eq!(ino(&fds[0]), file.metadata().unwrap().ino());
        send(&a, &Message::End, &[]).unwrap();
        let (end, none) = recv(&b).unwrap();
        assert_eq!(end, Message::End);
        assert!(none.is_empty());
    }

    fn files(n: usize) -> Vec<OwnedFd> {
        (0..n)
            .map(|_| OwnedFd::from(tempfile::tempfile().unwrap()))
            .collect()
    }

    #[test]
    fn named_listeners_round_trip_with_their_descriptors() {
        let (a, b) = UnixStream::pair().unwrap();
        let sent = files(3);
        let names = vec![
            "tunnel-v4".to_string(),
            "dns-v4".into(),
            "outbound-v6".into(),
        ];
        let message = Message::Pod {
            key: "shop/web".into(),
            netns_cookie: 7,
            listeners: Some(names.clone()),
        };
        let raw: Vec<RawFd> = sent.iter().map(|f| f.as_raw_fd()).collect();
        send(&a, &message, &raw).unwrap();
        let (got, fds) = recv(&b).unwrap();
        assert_eq!(got, message);
        let Message::Pod { listeners, .. } = got else {
            unreachable!()
        };
        let named = name_listeners(listeners, fds).unwrap();
        use std::os::unix::fs::MetadataExt;
        let ino = |fd: &OwnedFd| {
            std::fs::File::from(fd.try_clone().unwrap())
                .metadata()
                .unwrap()
                .ino()
        };
        for ((name, fd), (want_name, want_fd)) in named.iter().zip(names.iter().zip(&sent)) {
            assert_eq!(name, want_name);
            assert_eq!(ino(fd), ino(want_fd), "{name}");
        }
    }

    #[test]
    fn a_pod_message_without_names_is_the_unnamed_order() {
        // What an agent from before named listeners sends.
        let old = br#"{"type":"pod","key":"shop/web","netns_cookie":9}"#;
        let message: Message = serde_json::from_slice(old).unwrap();
        let Message::Pod { listeners, .. } = message else {
            panic!("{message:?}")
        };
        assert_eq!(listeners, None);
        let named = name_listeners(listeners, files(6)).unwrap();
        let names: Vec<&str> = named.iter().map(|(n, _)| n.as_str()).collect();
        assert_eq!(names, UNNAMED_LISTENERS);
        let err = name_listeners(None, files(5)).unwrap_err();
        assert!(err.contains("5 sockets for 6"), "{err}");
        let err = name_listeners(Some(vec!["tunnel-v4".into()]), files(2)).unwrap_err();
        assert!(err.contains("2 sockets for 1"), "{err}");
    }

    #[test]
    fn an_agent_before_names_reads_a_named_pod_message() {
        // Its `Pod` had no `listeners`, and unknown fields are ignored: it reads this.
        #[derive(Deserialize, Debug, PartialEq)]
        #[serde(tag = "type", rename_all = "camelCase")]
        enum Old {
            Pod { key: String, netns_cookie: u64 },
        }
        let message = Message::Pod {
            key: "shop/web".into(),
            netns_cookie: 3,
            listeners: Some(UNNAMED_LISTENERS.map(String::from).to_vec()),
        };
        let old: Old = serde_json::from_slice(&serde_json::to_vec(&message).unwrap()).unwrap();
        assert_eq!(
            old,
            Old::Pod {
                key: "shop/web".into(),
                netns_cookie: 3
            }
        );
    }

    #[test]
    fn garbage_and_a_closed_peer_are_errors_not_panics() {
        use std::io::Write;
        let (mut a, b) = UnixStream::pair().unwrap();
        a.write_all(&[200, 0, 0, 0, b'x']).unwrap();
        let err = recv(&b).unwrap_err().to_string();
        assert!(err.contains("announcing a body of 200"), "{err}");
        a.write_all(&[3, 0, 0, 0, b'{', b'}', b'x']).unwrap();
        let err = recv(&b).unwrap_err().to_string();
        assert!(err.contains("unreadable"), "{err}");
        drop(a);
        let err = recv(&b).unwrap_err().to_string();
        assert!(err.contains("closed"), "{err}");
    }
}
