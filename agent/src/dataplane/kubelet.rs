//! The kubelet's connections, for strict mode's one exemption: the `or_kubelet_ops`
//! `sock_ops` program attached (by a pinned link) to the kubelet's cgroup only
//! (`capture.kubeletCgroup`), and its map `KUBELET_CONNS` of the kubelet's live TCP
//! connections by 4-tuple. A strict pod's plaintext is served only when the accepted
//! connection is in the map: [`ProbeTable::take`]. Without the setting nothing is
//! attached and strict pods serve no plaintext at all.
use std::{
    fs::File,
    net::{IpAddr, SocketAddr},
    os::unix::fs::MetadataExt,
    path::Path,
    sync::{Arc, Mutex},
};

use agent_ebpf::{FAMILY_V4, FAMILY_V6, MAP_KUBELET_CONNS, ProbeKey};
use aya::{
    Ebpf,
    maps::{HashMap, MapData, MapError},
};

use super::{DataplaneError, cgroup, map_err, pins::Pins, programs, take_map};
use crate::config::Config;

/// The kubelet's live connections; cheap to clone.
#[derive(Clone)]
pub struct ProbeTable(Arc<Mutex<HashMap<MapData, ProbeKey, u64>>>);

impl ProbeTable {
    /// True, once, when the connection accepted from `peer` on `local` (the pod's
    /// address) is one the kubelet opened; its entry is taken out.
    pub fn take(&self, peer: SocketAddr, local: SocketAddr) -> bool {
        let key = probe_key(peer, local);
        match crate::sync::lock(&self.0).remove(&key) {
            Ok(()) => true,
            Err(MapError::KeyNotFound) => false,
            Err(error) => {
                tracing::warn!(%peer, %local, %error, "cannot look the kubelet's connections up");
                false
            }
        }
    }
}

/// The map's key for a connection from `peer` to `local`; IPv4-mapped IPv6 as IPv4.
pub fn probe_key(peer: SocketAddr, local: SocketAddr) -> ProbeKey {
    let bytes = |ip: IpAddr| -> (u16, [u8; 16]) {
        let mut out = [0u8; 16];
        match ip.to_canonical() {
            IpAddr::V4(v4) => {
                out[..4].copy_from_slice(&v4.octets());
                (FAMILY_V4, out)
            }
            IpAddr::V6(v6) => (FAMILY_V6, v6.octets()),
        }
    };
    let (family, src) = bytes(peer.ip());
    let (_, dst) = bytes(local.ip());
    ProbeKey {
        src,
        dst,
        src_port: peer.port(),
        dst_port: local.port(),
        family,
        _pad: 0,
    }
}

/// Takes the map and, when `capture.kubeletCgroup` is set, attaches the program to that
/// cgroup (which must not contain the pods' cgroup `attach`, nor lie below it). Returns
/// the table (None without the setting) and whether a pinned link was reused.
pub fn load(
    ebpf: &mut Ebpf,
    pins: &Pins,
    config: &Config,
    attach: &Path,
) -> Result<(Option<ProbeTable>, bool), DataplaneError> {
    let map = HashMap::try_from(take_map(ebpf, MAP_KUBELET_CONNS)?)
        .map_err(map_err(MAP_KUBELET_CONNS))?;
    let Some(setting) = &config.capture.kubelet_cgroup else {
        tracing::warn!(
            "capture.kubeletCgroup is not set: pods in strict namespaces refuse all plaintext, \
             the kubelet's health probes included (use exec probes, or set it)"
        );
        return Ok((None, false));
    };
    const KEY: &str = "capture.kubeletCgroup";
    let path = cgroup::resolve(&config.cgroup, setting, KEY)?;
    check_apart(&path, attach)?;
    let open_err = |source| DataplaneError::OpenCgroup {
        path: path.clone(),
        source,
    };
    let cgroup = File::open(&path).map_err(open_err)?;
    let cgroup_id = cgroup.metadata().map_err(open_err)?.ino();
    let reused =
        programs::attach_to_cgroup(ebpf, pins, programs::Target::Kubelet, (&cgroup, cgroup_id))?
            > 0;
    tracing::info!(kubelet_cgroup = %path.display(), "the kubelet's connections are recorded: strict pods serve its probes");
    Ok((Some(ProbeTable(Arc::new(Mutex::new(map)))), reused))
}

/// The kubelet's cgroup must hold no pod: it may neither contain the pods' cgroup nor
/// lie below it (then pods' sockets would be recorded as the kubelet's).
fn check_apart(kubelet: &Path, attach: &Path) -> Result<(), cgroup::CgroupError> {
    if kubelet.starts_with(attach) || attach.starts_with(kubelet) {
        return Err(cgroup::CgroupError::Attach {
            key: "capture.kubeletCgroup",
            path: kubelet.to_path_buf(),
            reason: format!(
                "contains or lies below the pods' cgroup {}; the kubelet's cgroup must hold no pod",
                attach.display()
            ),
        });
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_kubelets_cgroup_must_hold_no_pod() {
        let pods = Path::new("/sys/fs/cgroup/kubepods.slice");
        check_apart(
            Path::new("/sys/fs/cgroup/system.slice/kubelet.service"),
            pods,
        )
        .unwrap();
        // A sibling whose name starts like the pods' cgroup is apart.
        check_apart(Path::new("/sys/fs/cgroup/kubepods.slice.kubelet"), pods).unwrap();
        for nested in [
            "/sys/fs/cgroup/kubepods.slice",
            "/sys/fs/cgroup/kubepods.slice/kubelet",
            "/sys/fs/cgroup",
        ] {
            let err = check_apart(Path::new(nested), pods)
                .unwrap_err()
                .to_string();
            assert!(err.starts_with("capture.kubeletCgroup: "), "{err}");
            assert!(err.contains("must hold no pod"), "{err}");
        }
    }

    #[test]
    fn keys_are_the_pods_view_of_the_connection() {
        let peer: SocketAddr = "10.0.0.1:40000".parse().unwrap();
        let local: SocketAddr = "10.1.0.5:8080".parse().unwrap();
        let key = probe_key(peer, local);
        assert_eq!(key.family, FAMILY_V4);
        assert_eq!(&key.src[..4], &[10, 0, 0, 1]);
        assert_eq!(&key.src[4..], &[0; 12]);
        assert_eq!(&key.dst[..4], &[10, 1, 0, 5]);
        assert_eq!((key.src_port, key.dst_port), (40000, 8080));
        // A dual-stack listener sees IPv4 peers as IPv4-mapped: the same key.
        let mapped = probe_key(
            "[::ffff:10.0.0.1]:40000".parse().unwrap(),
            "[::ffff:10.1.0.5]:8080".parse().unwrap(),
        );
        assert_eq!(mapped, key);
        let v6 = probe_key(
            "[fd00::1]:40000".parse().unwrap(),
            "[fd00:1::5]:8080".parse().unwrap(),
        );
        assert_eq!(v6.family, FAMILY_V6);
        assert_eq!(
            v6.src,
            "fd00::1".parse::<std::net::Ipv6Addr>().unwrap().octets()
        );
        // Source and destination are not interchangeable.
        assert_ne!(probe_key(local, peer), key);
    }
}
