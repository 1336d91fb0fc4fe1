//! cargo-fuzz target: `copycat::fuzzing::fuzz_frame` (see fuzz/README.md).
#![no_main]

libfuzzer_sys::fuzz_target!(|data: &[u8]| {
    copycat::fuzzing::fuzz_frame(data);
});
