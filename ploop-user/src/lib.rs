//! ploop-verify as a library: the verifier and the ploop kit, for the binary and the tests.
//!
//! Two products share this crate. [`verify`] checks the snapshot contract: probe -> event ->
//! checker -> report, live or replayed. [`kit`] drives ploop devices and makes the workloads
//! the verifier watches (the ioctl client, dm stacks, stress and fuzzing). What both need
//! lives at the top: the kernel seam, the ploop ABI, BTF, the console and workloads.

pub mod btf;
pub mod console;
pub mod errno;
pub mod image;
pub mod kernel;
pub mod kit;
pub mod offsets;
pub mod ploop1;
pub mod ploop_abi;
pub mod stats;
pub mod verify;
pub mod workload;
