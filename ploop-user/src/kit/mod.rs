//! The ploop kit: a client for the ploop ioctls (devices, snapshots, the support probe), dm
//! stacks, freeze/thaw triggers, and the stress and fuzzing workloads the verifier watches.

pub mod dm;
pub mod gpt;
pub mod ploop_stress;
pub mod ploopctl;
pub mod testkit;
