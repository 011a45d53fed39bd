//! What the in-pod data-plane tests share: namespaces and a directory
//! removed on drop, and the enrolled-pod record they hand the data plane.

use std::net::IpAddr;
use std::path::PathBuf;

use ambit_cni::EnrolledPod;
use ambit_netns::NetNs;

/// Named namespaces and a directory removed on drop.
pub(crate) struct Cleanup(pub(crate) Vec<String>, pub(crate) PathBuf);

impl Drop for Cleanup {
    fn drop(&mut self) {
        for n in &self.0 {
            let _ = NetNs::delete_named(n);
        }
        let _ = std::fs::remove_dir_all(&self.1);
    }
}

/// Pod `name` of namespace `shop` with `ips`, in the named netns `ns`.
pub(crate) fn pod(name: &str, ns: &str, ips: &[&str], dns_capture: Option<bool>) -> EnrolledPod {
    EnrolledPod {
        uid: format!("uid-{name}"),
        name: name.into(),
        namespace: "shop".into(),
        service_account: "sa".into(),
        ips: ips
            .iter()
            .map(|i| i.parse::<IpAddr>().expect("ip"))
            .collect(),
        netns: Some(PathBuf::from(format!("/run/netns/{ns}"))),
        netns_id: None,
        dns_capture,
    }
}
