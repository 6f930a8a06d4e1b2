//! Compiles `proto/txlog.proto` with protox, so the build needs no system `protoc`.

fn main() -> Result<(), Box<dyn std::error::Error>> {
    println!("cargo:rerun-if-changed=proto/txlog.proto");
    let descriptors = protox::compile(["proto/txlog.proto"], ["proto"])?;
    // The encoded descriptors serve gRPC server reflection (`grpcurl` needs no .proto file).
    let out_dir = std::path::PathBuf::from(std::env::var("OUT_DIR")?);
    std::fs::write(
        out_dir.join("txlog_descriptor.bin"),
        prost::Message::encode_to_vec(&descriptors),
    )?;
    tonic_prost_build::configure().bytes(".").compile_fds(descriptors)?;
    Ok(())
}
