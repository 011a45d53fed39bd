//! Compiles `proto/istio_ca.proto` (written from the field facts in
//! ztunnel-wire.md, not copied from Istio) with protox, so no `protoc` is
//! needed.

fn main() -> Result<(), Box<dyn std::error::Error>> {
    #[cfg(feature = "istio-ca")]
    {
        println!("cargo:rerun-if-changed=proto/istio_ca.proto");
        let fds = protox::compile(["proto/istio_ca.proto"], ["proto"])?;
        tonic_prost_build::configure()
            .build_client(true)
            .build_server(true)
            .compile_fds(fds)?;
    }
    Ok(())
}
