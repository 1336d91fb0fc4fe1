//! The fuzzing entry points (`copycat::fuzzing`) on stable, under `cargo test`: every input
//! of the committed corpora and regression files (`fuzz/corpus/TARGET/`,
//! `fuzz/regressions/TARGET/`), then seeded random inputs and mutations of the corpus
//! inputs. Each entry point drives a decoder or state machine through its real code and
//! panics on a bug; the fuzz targets in `fuzz/` run the same functions for longer.

use std::path::Path;

use rand::rngs::SmallRng;
use rand::{Rng, SeedableRng};

type EntryPoint = fn(&[u8]);

const TARGETS: [(&str, EntryPoint); 6] = [
    ("frame", copycat::fuzzing::fuzz_frame),
    ("batch", copycat::fuzzing::fuzz_batch),
    ("gossip_open", copycat::fuzzing::fuzz_gossip_open),
    ("directory_ops", copycat::fuzzing::fuzz_directory_ops),
    ("registry_ops", copycat::fuzzing::fuzz_registry_ops),
    ("stream_chunks", copycat::fuzzing::fuzz_stream_chunks),
];

/// Random inputs per target, and mutations per target (spread over its corpus).
const RANDOM_INPUTS: usize = 1000;
const MUTATIONS: usize = 1000;

/// The committed inputs of `target`, corpus and regressions, in name order.
fn committed(target: &str) -> Vec<(String, Vec<u8>)> {
    let root = Path::new(env!("CARGO_MANIFEST_DIR")).join("fuzz");
    let mut inputs = Vec::new();
    for kind in ["corpus", "regressions"] {
        let Ok(dir) = std::fs::read_dir(root.join(kind).join(target)) else {
            continue;
        };
        for entry in dir.flatten() {
            let path = entry.path();
            if let Ok(bytes) = std::fs::read(&path) {
                inputs.push((path.display().to_string(), bytes));
            }
        }
    }
    inputs.sort();
    inputs
}

/// Runs `run` on `input`, naming the input if it panics.
fn run_named(target: &str, name: &str, run: EntryPoint, input: &[u8]) {
    let outcome = std::panic::catch_unwind(|| run(input));
    if let Err(panic) = outcome {
        eprintln!(
            "{target}: input {name} ({} bytes): {input:02x?}",
            input.len()
        );
        std::panic::resume_unwind(panic);
    }
}

#[test]
fn committed_corpora_and_regressions_pass() {
    for (target, run) in TARGETS {
        let inputs = committed(target);
        for (name, input) in &inputs {
            run_named(target, name, run, input);
        }
    }
}

#[test]
fn every_target_has_a_committed_corpus() {
    for (target, _) in TARGETS {
        assert!(
            !committed(target).is_empty(),
            "no committed inputs for {target}"
        );
    }
}

/// A random input: mostly short, bytes biased towards small values and 0xff.
fn random_input(rng: &mut SmallRng) -> Vec<u8> {
    let len = if rng.gen_bool(0.8) {
        rng.gen_range(0..64)
    } else {
        rng.gen_range(64..2048)
    };
    (0..len)
        .map(|_| match rng.gen_range(0..4) {
            0 => 0,
            1 => rng.gen_range(0..8),
            2 => 0xff,
            _ => rng.gen(),
        })
        .collect()
}

/// `input` with a few bytes flipped, inserted, removed or duplicated.
fn mutate(rng: &mut SmallRng, input: &[u8]) -> Vec<u8> {
    let mut out = input.to_vec();
    for _ in 0..rng.gen_range(1..5) {
        let at = if out.is_empty() {
            0
        } else {
            rng.gen_range(0..out.len())
        };
        match rng.gen_range(0..4) {
            0 if !out.is_empty() => out[at] ^= 1 << rng.gen_range(0..8),
            1 => out.insert(at, rng.gen()),
            2 if !out.is_empty() => {
                out.remove(at);
            }
            _ => {
                let end = (at + rng.gen_range(1..16)).min(out.len());
                let piece = out[at..end].to_vec();
                out.splice(at..at, piece);
            }
        }
    }
    out
}

#[test]
fn seeded_random_and_mutated_inputs_pass() {
    let mut rng = SmallRng::seed_from_u64(0x00c0_11ca);
    for (target, run) in TARGETS {
        for i in 0..RANDOM_INPUTS {
            let input = random_input(&mut rng);
            run_named(target, &format!("random #{i}"), run, &input);
        }
        let corpus = committed(target);
        if corpus.is_empty() {
            continue;
        }
        for i in 0..MUTATIONS {
            let (name, base) = &corpus[rng.gen_range(0..corpus.len())];
            let input = mutate(&mut rng, base);
            run_named(target, &format!("mutation #{i} of {name}"), run, &input);
        }
    }
}
