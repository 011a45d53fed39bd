//! Prints one of Istio's capture plans as `iptables-save` and `nft` text,
//! or applies / removes it in a named network namespace.
//!
//! ```text
//! cargo run -p ambit-examples --example redirect-plan -- node
//! cargo run -p ambit-examples --example redirect-plan -- inpod --format nft
//! cargo run -p ambit-examples --example redirect-plan -- inpod --apply mypod
//! cargo run -p ambit-examples --example redirect-plan -- inpod --remove mypod
//! ```

use std::net::Ipv4Addr;

use ambit_netns::NetNs;
use ambit_redirect::profiles::{self, InpodConfig, NodeConfig, SidecarConfig, ZtunnelConfig};
use ambit_redirect::{Backend, Plan};
use anyhow::Context;
use clap::{Parser, ValueEnum};

#[derive(Debug, Clone, Copy, ValueEnum)]
enum Profile {
    /// Node-level capture, host half (Istio 1.16–1.20).
    Node,
    /// Node-level capture, ztunnel-netns half.
    Ztunnel,
    /// In-pod capture, inside a pod's namespace (current Istio).
    Inpod,
    /// In-pod capture, host half (kubelet probe SNAT).
    InpodHost,
    /// Classic sidecar capture.
    Sidecar,
}

#[derive(Debug, Clone, Copy, ValueEnum, PartialEq)]
enum Format {
    Both,
    Iptables,
    Nft,
}

#[derive(Debug, Clone, Copy, ValueEnum)]
enum BackendArg {
    Nft,
    Iptables,
}

/// Print, apply or remove a capture plan.
#[derive(Debug, Parser)]
struct Args {
    /// Which plan.
    profile: Profile,
    /// What to print when neither --apply nor --remove is given.
    #[arg(long, value_enum, default_value = "both")]
    format: Format,
    /// Apply the plan in this named netns (`ip netns` name).
    #[arg(long, value_name = "NETNS", conflicts_with = "remove")]
    apply: Option<String>,
    /// Remove the plan from this named netns.
    #[arg(long, value_name = "NETNS")]
    remove: Option<String>,
    /// Backend for --apply/--remove.
    #[arg(long, value_enum, default_value = "nft")]
    backend: BackendArg,
    /// Node HostIP (node and ztunnel profiles).
    #[arg(long, default_value = "10.244.0.1")]
    host_ip: Ipv4Addr,
    /// ztunnel pod IP (node and ztunnel profiles).
    #[arg(long, default_value = "10.244.0.2")]
    ztunnel_ip: Ipv4Addr,
    /// Host-side veth of the ztunnel pod (node profile).
    #[arg(long, default_value = "veth0")]
    ztunnel_veth: String,
    /// Capture DNS too (node and inpod profiles).
    #[arg(long)]
    dns: bool,
}

fn plan(a: &Args) -> anyhow::Result<Plan> {
    let inpod = InpodConfig {
        capture_dns: a.dns,
        ..InpodConfig::default()
    };
    Ok(match a.profile {
        Profile::Node => {
            let mut c = NodeConfig::new(a.host_ip, &a.ztunnel_veth, a.ztunnel_ip);
            c.capture_dns = a.dns;
            profiles::node_host(&c)?
        }
        Profile::Ztunnel => profiles::ztunnel_ns(&ZtunnelConfig::new(a.host_ip, a.ztunnel_ip))?,
        Profile::Inpod => profiles::inpod(&inpod)?,
        Profile::InpodHost => profiles::inpod_host_probes(&inpod)?,
        Profile::Sidecar => profiles::sidecar(&SidecarConfig::default())?,
    })
}

fn main() -> anyhow::Result<()> {
    let a = Args::parse();
    let plan = plan(&a)?;
    let backend = match a.backend {
        BackendArg::Nft => Backend::Nft,
        BackendArg::Iptables => Backend::Iptables,
    };
    if let Some(name) = &a.apply {
        let ns = NetNs::named(name)?;
        plan.apply(&ns, backend)
            .with_context(|| format!("applying {} in {name}", plan.name))?;
        let drift = plan.verify(&ns, backend)?;
        println!(
            "applied {} in {name} ({backend:?}); drift: {}",
            plan.name,
            drift.len()
        );
        for d in drift {
            println!("  {d}");
        }
        return Ok(());
    }
    if let Some(name) = &a.remove {
        let ns = NetNs::named(name)?;
        plan.remove(&ns, backend)
            .with_context(|| format!("removing {} from {name}", plan.name))?;
        println!("removed {} from {name}", plan.name);
        return Ok(());
    }
    if a.format != Format::Nft {
        println!("{}", plan.render_iptables()?);
    }
    if a.format != Format::Iptables {
        println!("{}", plan.render_nft()?);
    }
    Ok(())
}
