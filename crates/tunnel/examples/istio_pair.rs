//! Creates Istio's node-level tunnel pair as VXLAN in two fresh namespaces
//! (a "node" and its "ztunnel pod", joined by a veth), prints `ip -d addr`
//! for both, applies again to show nothing changes, and deletes the
//! namespaces (and with them every link) on the way out.
//!
//! Run as root: `cargo run -p ambit-tunnel --example istio_pair`
//! (`-- geneve` tries Geneve instead, which fails clearly without CONFIG_GENEVE).

use std::process::Command;

use ambit_netns::NetNs;
use ambit_tunnel::{IstioTunnels, TunnelKind};

fn main() -> std::process::ExitCode {
    match demo() {
        Ok(()) => std::process::ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("error: {e}");
            std::process::ExitCode::FAILURE
        }
    }
}

fn demo() -> Result<(), Box<dyn std::error::Error>> {
    let kind = match std::env::args().nth(1).as_deref() {
        Some("geneve") => TunnelKind::Geneve,
        _ => TunnelKind::Vxlan,
    };
    let names = Names([
        format!("ambit-ex{}-node", std::process::id()),
        format!("ambit-ex{}-zt", std::process::id()),
    ]);
    let node = NetNs::create_named(&names.0[0])?;
    let ztunnel = NetNs::create_named(&names.0[1])?;

    // The underlay: a veth, 10.244.0.1 (node, Istio's HostIP) <-> 10.244.0.2
    // (ztunnel pod). Set up with iproute2 here because this crate manages
    // tunnels, not veths.
    let veth = format!(
        "link add veth0 type veth peer name eth0 netns {}",
        names.0[1]
    );
    for args in [
        veth.split(' ').collect::<Vec<_>>(),
        vec!["addr", "add", "10.244.0.1/24", "dev", "veth0"],
        vec!["link", "set", "veth0", "up"],
    ] {
        run(&node, &args)?;
    }
    for args in [
        vec!["addr", "add", "10.244.0.2/24", "dev", "eth0"],
        vec!["link", "set", "eth0", "up"],
    ] {
        run(&ztunnel, &args)?;
    }

    let istio = IstioTunnels {
        kind,
        ..IstioTunnels::default()
    };
    let host = istio.apply_host_side(&node, "10.244.0.2".parse()?)?;
    let pod = istio.apply_ztunnel_side(&ztunnel, "10.244.0.1".parse()?, host.port)?;
    println!("host side: {host:?}\nztunnel side: {pod:?}\n");
    println!("--- node: ip -d addr ---");
    print!("{}", show(&node)?);
    println!("--- ztunnel pod: ip -d addr ---");
    print!("{}", show(&ztunnel)?);

    let again = istio.apply_host_side(&node, "10.244.0.2".parse()?)?;
    println!(
        "\nsecond apply: istioin {:?}, istioout {:?}",
        again.inbound.action, again.outbound.action
    );
    Ok(())
}

/// Deletes the named namespaces when dropped, also on an early error return.
struct Names([String; 2]);

impl Drop for Names {
    fn drop(&mut self) {
        for n in &self.0 {
            let _ = NetNs::delete_named(n);
        }
    }
}

fn run(ns: &NetNs, args: &[&str]) -> Result<(), Box<dyn std::error::Error>> {
    let out = ns.output(Command::new("ip").args(args))?;
    if !out.status.success() {
        return Err(format!(
            "ip {}: {}",
            args.join(" "),
            String::from_utf8_lossy(&out.stderr)
        )
        .into());
    }
    Ok(())
}

fn show(ns: &NetNs) -> Result<String, Box<dyn std::error::Error>> {
    let out = ns.output(Command::new("ip").args(["-d", "addr", "show"]))?;
    Ok(String::from_utf8_lossy(&out.stdout).into_owned())
}
