//! The image reader on arbitrary bytes: every entry point `ploop-verify image` and the X1
//! oracle use (`testimg::exercise`). Any panic, overflow included (built with debug
//! assertions), is a finding.
#![no_main]

use std::sync::OnceLock;

use libfuzzer_sys::fuzz_target;
use ploop_user::image::testimg::exercise;

/// One scratch directory per fuzzing process: the reader works on files.
static DIR: OnceLock<tempfile::TempDir> = OnceLock::new();

fuzz_target!(|data: &[u8]| {
    // The harness's own check (tests/fuzz.rs): an input starting with this marker must be
    // reported as a crash, or a run that finds nothing proves nothing.
    if std::env::var_os("PLOOP_FUZZ_CANARY").is_some() && data.starts_with(b"ploop-fuzz-canary") {
        panic!("canary input reached the target");
    }
    let dir = DIR.get_or_init(|| tempfile::tempdir().expect("a scratch directory"));
    exercise(dir.path(), data);
});
