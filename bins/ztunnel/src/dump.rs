//! The `config` section of `/config_dump`: the settings ztunnel runs
//! with, under istio/ztunnel's field names (camelCase; durations as
//! `{secs, nanos}`, as serde writes Rust durations).

use std::time::Duration;

use serde_json::{Value, json};

use crate::Args;
use crate::settings::ProxyMode;

fn duration(d: Duration) -> Value {
    json!({"secs": d.as_secs(), "nanos": d.subsec_nanos()})
}

/// The settings `a` resolves to.
pub fn config(a: &Args) -> Value {
    let r = &a.resolved;
    let i = &a.istio;
    let h = &a.hbone;
    let hb = ambit_hbone::ClientConfig::default();
    let keepalive = r.socket.keepalive;
    let listen = |port: u16| std::net::SocketAddr::new(a.listen_ip, port).to_string();
    json!({
        "proxy": i.enable_proxy,
        "dnsProxy": r.dns_port.is_some(),
        "windowSize": h.http2_stream_window_size.unwrap_or(hb.h2.stream_window),
        "connectionWindowSize": h.http2_connection_window_size.unwrap_or(hb.h2.connection_window),
        "frameSize": h.http2_frame_size.unwrap_or(hb.h2.max_frame_size),
        "poolMaxStreamsPerConn": h.pool_max_streams_per_connection.map_or(hb.max_streams_per_connection, usize::from),
        "poolUnusedReleaseTimeout": duration(h.pool_unused_release_timeout.unwrap_or(hb.idle_timeout)),
        "socks5Addr": a.enable_socks5.then(|| a.socks5_address.to_string()),
        "adminAddr": a.admin.admin_addr.to_string(),
        "statsAddr": a.admin.stats_addr.to_string(),
        "readinessAddr": a.admin.readiness_addr.to_string(),
        "inboundAddr": listen(15008),
        "inboundPlaintextAddr": listen(15006),
        "outboundAddr": listen(15001),
        "network": a.network,
        "localNode": a.node_name,
        "proxyMode": match i.proxy_mode { ProxyMode::Shared => "Shared", ProxyMode::Dedicated => "Dedicated" },
        "proxyWorkloadInformation": r.dedicated.as_ref().map(|w| json!({
            "name": w.name, "namespace": w.namespace, "serviceAccount": w.service_account,
        })),
        "clusterId": a.ca.cluster_id,
        "clusterDomain": i.cluster_domain,
        "caAddress": a.ca.ca_address,
        "xdsAddress": if a.mesh.local_xds_path.is_some() { None } else { a.mesh.xds_address.clone() },
        "preferedServiceNamespace": i.prefered_service_namespace,
        "secretTtl": duration(a.ca.secret_ttl),
        "xdsOnDemand": i.xds_on_demand,
        "fakeCa": false,
        "selfTerminationDeadline": duration(r.drain),
        "proxyMetadata": r.proxy_config.proxy_metadata,
        "numWorkerThreads": r.worker_threads,
        "requireOriginalSource": i.enable_orig_src,
        "proxyArgs": std::env::args().skip(1).collect::<Vec<_>>().join(" "),
        "inpodEnabled": a.inpod,
        "inpodUds": a.inpod_uds.display().to_string(),
        "inpodPortReuse": r.socket.port_reuse,
        "packetMark": a.inpod.then_some(r.packet_mark),
        "socketConfig": {
            "keepaliveTime": duration(keepalive.map_or(i.keepalive_time, |k| k.time)),
            "keepaliveInterval": duration(keepalive.map_or(i.keepalive_interval, |k| k.interval)),
            "keepaliveRetries": keepalive.map_or(i.keepalive_retries, |k| k.retries),
            "keepaliveEnabled": keepalive.is_some(),
            "userTimeoutEnabled": r.socket.user_timeout,
        },
        "localhostAppTunnel": i.localhost_app_tunnel,
        "ipv6Enabled": i.ipv6_enabled,
    })
}
