//! What the binaries accept, read from their clap definitions by
//! introspection (`clap::CommandFactory`): every argument with its flag,
//! environment name and default, per subcommand, plus the environment
//! variables each binary reads outside clap (its `EXTRA_ENV`, and for the
//! two proxies the node identity they report to istiod).
//!
//! Because the definitions are the binaries' own `Command` values, a flag
//! moved into a shared `#[command(flatten)]` group, a default taken from a
//! constant or a renamed environment variable is seen exactly as clap sees
//! it at run time.

use std::collections::{BTreeMap, BTreeSet};

use clap::{Arg, ArgAction, Command, CommandFactory};

/// The three binaries, under `bins/<name>`.
pub const BINARY_NAMES: [&str; 3] = ["cni-node", "ztunnel", "waypoint"];

/// One clap argument.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ArgDef {
    /// The argument's id, which clap derives from the Rust field name
    /// (`admin_addr`).
    pub field: String,
    /// The long flag without dashes (`admin-addr`), if it has one.
    pub long: Option<String>,
    /// The environment variable (`ADMIN_ADDRESS`), if any.
    pub env: Option<String>,
    /// The default as text (`127.0.0.1:15000`); several values are joined
    /// with `,`.
    pub default: Option<String>,
    /// clap refuses to start without it.
    pub required: bool,
    /// A positional argument (a bare word, in order), not a flag.
    pub positional: bool,
    /// The values clap accepts, when it lists them (value enums).
    pub values: Vec<String>,
}

impl ArgDef {
    fn from_clap(arg: &Arg) -> Self {
        let defaults: Vec<String> = arg
            .get_default_values()
            .iter()
            .map(|v| v.to_string_lossy().into_owned())
            .collect();
        Self {
            field: arg.get_id().as_str().to_owned(),
            long: arg.get_long().map(str::to_owned),
            env: arg.get_env().map(|e| e.to_string_lossy().into_owned()),
            default: (!defaults.is_empty()).then(|| defaults.join(",")),
            required: arg.is_required_set(),
            positional: arg.is_positional(),
            values: arg
                .get_possible_values()
                .iter()
                .map(|v| v.get_name().to_owned())
                .collect(),
        }
    }
}

/// One binary's command line.
#[derive(Debug, Clone, Default)]
pub struct Binary {
    /// `cni-node`, `ztunnel` or `waypoint`.
    pub name: String,
    /// Arguments of the top-level command (for a binary with subcommands,
    /// the ones marked `global`).
    pub global: Vec<ArgDef>,
    /// Subcommand name (kebab case, as clap derives it) → its arguments.
    pub subcommands: BTreeMap<String, Vec<ArgDef>>,
    /// Environment variables read outside clap (`RUST_LOG`, `CNI_COMMAND`,
    /// the node identity's `POD_NAME`, …).
    pub extra_env: BTreeSet<String>,
    /// Prefixes of environment variables read as a family (`ISTIO_META_`).
    pub env_prefixes: Vec<String>,
}

impl Binary {
    /// Reads `command` (as the binary's `CommandFactory` builds it).
    pub fn from_command(name: &str, command: &Command) -> Self {
        let args = |c: &Command| -> Vec<ArgDef> {
            c.get_arguments()
                .filter(|a| !is_builtin(a))
                .map(ArgDef::from_clap)
                .collect()
        };
        let subcommands = command
            .get_subcommands()
            .map(|s| (s.get_name().to_owned(), args(s)))
            .collect();
        Self {
            name: name.to_owned(),
            global: args(command),
            subcommands,
            extra_env: BTreeSet::new(),
            env_prefixes: Vec::new(),
        }
    }

    /// The arguments in effect for `sub` (global ones first).
    pub fn args(&self, sub: Option<&str>) -> Vec<&ArgDef> {
        let mut v: Vec<&ArgDef> = self.global.iter().collect();
        if let Some(s) = sub.and_then(|s| self.subcommands.get(s)) {
            v.extend(s.iter().filter(|a| !self.global.contains(a)));
        }
        v
    }

    /// Whether the binary reads `name` from the environment (for `sub`).
    pub fn reads_env(&self, sub: Option<&str>, name: &str) -> bool {
        self.args(sub)
            .iter()
            .any(|a| a.env.as_deref() == Some(name))
            || self.extra_env.contains(name)
            || self
                .env_prefixes
                .iter()
                .any(|p| name.starts_with(p.as_str()))
    }

    fn with_env(mut self, names: &[&str]) -> Self {
        self.extra_env.extend(names.iter().map(|s| (*s).to_owned()));
        self
    }

    fn with_node_identity(self) -> Self {
        let mut b = self.with_env(&ambit_xds::NodeIdentity::ENV);
        b.env_prefixes.push(ambit_xds::ISTIO_META_PREFIX.to_owned());
        // istio/ztunnel's extra request headers to istiod.
        b.env_prefixes.push("XDS_HEADER_".to_owned());
        b.env_prefixes.push("CA_HEADER_".to_owned());
        b
    }
}

/// `--help` and `--version`, which clap adds itself.
fn is_builtin(arg: &Arg) -> bool {
    matches!(
        arg.get_action(),
        ArgAction::Help | ArgAction::HelpShort | ArgAction::HelpLong | ArgAction::Version
    )
}

/// All three binaries.
#[derive(Debug, Clone, Default)]
pub struct Binaries {
    /// By name.
    pub bins: BTreeMap<String, Binary>,
}

impl Binaries {
    /// The three binaries' command lines, from their own clap definitions.
    pub fn introspect() -> Self {
        let list = [
            Binary::from_command("cni-node", &cni_node::Cli::command())
                .with_env(&cni_node::EXTRA_ENV),
            Binary::from_command("ztunnel", &ztunnel::Args::command())
                .with_env(&ztunnel::EXTRA_ENV)
                .with_node_identity(),
            Binary::from_command("waypoint", &waypoint::Args::command())
                .with_env(&waypoint::EXTRA_ENV)
                .with_node_identity(),
        ];
        Self {
            bins: list.into_iter().map(|b| (b.name.clone(), b)).collect(),
        }
    }

    /// The binary called `name`.
    pub fn get(&self, name: &str) -> Option<&Binary> {
        self.bins.get(name)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[derive(Debug, clap::Parser)]
    struct Cli {
        /// Log format.
        #[arg(long, env = "LOG_FORMAT", default_value = "text", global = true)]
        log_format: String,
        #[command(subcommand)]
        command: Cmd,
    }

    #[derive(Debug, clap::Subcommand)]
    enum Cmd {
        /// Run it.
        Run(RunArgs),
        /// Install it.
        InstallAll(RunArgs),
    }

    const MARK: u32 = 1337;

    #[derive(Debug, clap::Args)]
    struct RunArgs {
        #[arg(long, env = "RUN_DIR", default_value = "/var/run/x")]
        run_dir: std::path::PathBuf,
        #[arg(long, env = "MARK", default_value_t = MARK)]
        mark: u32,
        #[arg(long, env = "NODE_NAME")]
        node_name: String,
        #[arg(long, value_delimiter = ',', default_value = "a,b")]
        list: Vec<String>,
        #[arg(long)]
        maybe: Option<u16>,
    }

    #[test]
    fn reads_clap_definitions() {
        let b = Binary::from_command("t", &Cli::command()).with_env(&["CNI_COMMAND"]);
        assert_eq!(b.global.len(), 1);
        assert_eq!(b.global[0].env.as_deref(), Some("LOG_FORMAT"));
        assert_eq!(b.global[0].default.as_deref(), Some("text"));
        assert!(b.subcommands.contains_key("install-all"));
        let run = b.args(Some("run"));
        assert_eq!(run.len(), 6, "{run:?}");
        assert_eq!(run[1].field, "run_dir");
        assert_eq!(run[1].default.as_deref(), Some("/var/run/x"));
        assert_eq!(run[2].default.as_deref(), Some("1337"));
        assert!(run[3].required && !run[4].required && !run[5].required);
        assert_eq!(run[4].default.as_deref(), Some("a,b"));
        assert_eq!(run[5].long.as_deref(), Some("maybe"));
        assert!(b.extra_env.contains("CNI_COMMAND"));
        assert!(b.reads_env(Some("run"), "NODE_NAME"));
        assert!(!b.reads_env(None, "NODE_NAME"));
    }

    #[test]
    fn the_real_binaries_are_read() {
        let all = Binaries::introspect();
        let z = all.get("ztunnel").expect("ztunnel");
        assert!(z.reads_env(None, "XDS_ADDRESS"));
        assert!(z.reads_env(None, "POD_NAME") && z.reads_env(None, "ISTIO_META_CLUSTER_ID"));
        let c = all.get("cni-node").expect("cni-node");
        assert!(c.subcommands.contains_key("run") && c.reads_env(None, "CNI_COMMAND"));
        assert!(
            all.get("waypoint")
                .is_some_and(|w| w.reads_env(None, "WAYPOINT_CONFIG"))
        );
    }
}
