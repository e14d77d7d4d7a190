//! The verifier: probes attach, events flow to the checker, the checker's outcome to the
//! reports. Live (`run`, `trace`) and replayed (`report`) runs go through the same pipeline.

pub mod checker;
pub mod doctor;
pub mod drive;
pub mod events;
mod fastparse;
pub mod oracle;
mod perf_ring;
pub mod probe;
pub mod profile;
pub mod report;
pub mod run;
pub mod stack;
pub mod synth;
pub mod tech_preview;
pub mod trace;
pub mod tracefile;
