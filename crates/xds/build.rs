//! Compiles Istio's workload, security and ZDS protos (written from the
//! wire facts in ztunnel-wire.md and istio-redirection.md, not copied) with
//! protox, so no `protoc` is needed. Envoy's types come from `envoy-types`;
//! `google.protobuf.Any` maps onto its `Any` so one type flows through.

fn main() -> Result<(), Box<dyn std::error::Error>> {
    let protos = [
        "proto/workload.proto",
        "proto/security.proto",
        "proto/zds.proto",
    ];
    for proto in protos {
        println!("cargo:rerun-if-changed={proto}");
    }
    let fds = protox::compile(protos, ["proto"])?;
    let mut config = prost_build::Config::new();
    config.enable_type_names();
    config.type_name_domain(["."], "type.googleapis.com");
    tonic_prost_build::configure()
        .build_client(false)
        .build_server(false)
        .extern_path(
            ".google.protobuf.Any",
            "::envoy_types::pb::google::protobuf::Any",
        )
        .compile_fds_with_config(fds, config)?;
    Ok(())
}
