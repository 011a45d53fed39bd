//! `ambit-cni-plugin`: Ambit's chained CNI plugin on its own, the file the
//! installer puts in the host's CNI bin dir. It holds neither the node
//! agent nor the Kubernetes client, so it starts in about half the time of
//! `cni-node`; an ADD that needs the API server to decide the pod's
//! membership is handed to `cni-node` (see
//! `ambit_cni::plugin::run_agent_first`).

fn main() -> std::process::ExitCode {
    cni_node::plugin::small_plugin_main()
}
