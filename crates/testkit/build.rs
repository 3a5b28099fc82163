//! Compiles `proto/echo.proto` (the gRPC test service) and `proto/health.proto` (the
//! standard gRPC Health Checking Protocol) with protox and tonic-prost-build: pure Rust, no
//! `protoc` needed.

fn main() -> Result<(), Box<dyn std::error::Error>> {
    println!("cargo:rerun-if-changed=proto/echo.proto");
    println!("cargo:rerun-if-changed=proto/health.proto");
    let fds = protox::compile(["proto/echo.proto", "proto/health.proto"], ["proto"])?;
    tonic_prost_build::configure()
        .build_server(true)
        .build_client(true)
        .compile_fds(fds)?;
    Ok(())
}
