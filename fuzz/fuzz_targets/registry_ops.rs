//! cargo-fuzz target: `copycat::fuzzing::fuzz_registry_ops` (see fuzz/README.md).
#![no_main]

libfuzzer_sys::fuzz_target!(|data: &[u8]| {
    copycat::fuzzing::fuzz_registry_ops(data);
});
