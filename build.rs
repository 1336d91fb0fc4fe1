//! Compiles `proto/copycat.proto` with protox (pure Rust), so no system `protoc` is needed.

fn main() -> Result<(), Box<dyn std::error::Error>> {
    println!("cargo:rerun-if-changed=proto/copycat.proto");
    let fds = protox::compile(["proto/copycat.proto"], ["proto/"])?;
    // A raft message arrives inside a frame; as `Bytes` it is a slice of the frame's buffer
    // rather than a copy of its own.
    prost_build::Config::new()
        .bytes([".copycat.GroupMessage.message"])
        .compile_fds(fds)?;
    Ok(())
}
