//! The first kernel of each BPF feature the probes use, or avoid so that old kernels load them:
//! one table. Messages that state a minimum format it from here; texts that cannot (clap help
//! from doc comments, the eBPF crates' docs, the README) are checked against it by the tests
//! below.

use std::fmt;

/// A mainline kernel version, `major.minor`.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord)]
pub struct Version {
    pub major: u32,
    pub minor: u32,
}

impl Version {
    pub const fn new(major: u32, minor: u32) -> Self {
        Version { major, minor }
    }
}

impl fmt::Display for Version {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}.{}", self.major, self.minor)
    }
}

/// A BPF feature, the first kernel with it, and what ploop-verify does with it.
#[derive(Debug, PartialEq, Eq)]
pub struct Minimum {
    pub feature: &'static str,
    pub since: Version,
    /// What needs it, or why the objects do without it.
    pub role: &'static str,
}

pub const KPROBE: Minimum = Minimum {
    feature: "kprobe/kretprobe programs",
    since: Version::new(4, 1),
    role: "--method kprobe; every probe on a ploop (module) function",
};
pub const PERF_EVENT_ARRAY: Minimum = Minimum {
    feature: "perf event array maps",
    since: Version::new(4, 3),
    role: "--transport perf: the ploop-perf object",
};
pub const GET_CURRENT_TASK: Minimum = Minimum {
    feature: "bpf_get_current_task",
    since: Version::new(4, 8),
    role: "the in-kernel sync-fd walk (S1); the newest helper the ploop-perf object calls",
};
pub const BPF_TO_BPF_CALLS: Minimum = Minimum {
    feature: "bpf-to-bpf calls",
    since: Version::new(4, 16),
    role: "avoided: the objects are linked without them (ploop-ebpf/build.rs)",
};
pub const GLOBAL_DATA: Minimum = Minimum {
    feature: "global data (.data, .bss, .rodata maps)",
    since: Version::new(5, 2),
    role: "avoided: configuration lives in the PLOOP_CONFIG array map",
};
pub const PROBE_READ_KERNEL_USER: Minimum = Minimum {
    feature: "bpf_probe_read_kernel/bpf_probe_read_user",
    since: Version::new(5, 5),
    role: "avoided by the ploop-perf object, which keeps bpf_probe_read",
};
pub const FENTRY: Minimum = Minimum {
    feature: "fentry/fexit programs (with kernel BTF)",
    since: Version::new(5, 5),
    role: "--method fentry: freeze/thaw (vmlinux functions only)",
};
pub const RINGBUF: Minimum = Minimum {
    feature: "BPF ring buffer",
    since: Version::new(5, 8),
    role: "--transport ringbuf: the ploop-rb object and aya-log",
};
pub const GET_FUNC_RET: Minimum = Minimum {
    feature: "bpf_get_func_ret",
    since: Version::new(5, 17),
    role: "avoided: fexit reads the return value after the arguments",
};

/// Every minimum, oldest first.
pub const MINIMUMS: &[&Minimum] = &[
    &KPROBE,
    &PERF_EVENT_ARRAY,
    &GET_CURRENT_TASK,
    &BPF_TO_BPF_CALLS,
    &GLOBAL_DATA,
    &PROBE_READ_KERNEL_USER,
    &FENTRY,
    &RINGBUF,
    &GET_FUNC_RET,
];

#[cfg(test)]
mod tests {
    use super::*;
    use crate::verify::probe::{Method, Transport};
    use clap::ValueEnum as _;

    #[test]
    fn the_table_is_oldest_first_and_named_once() {
        assert!(MINIMUMS.windows(2).all(|w| w[0].since <= w[1].since));
        let mut names: Vec<_> = MINIMUMS.iter().map(|m| m.feature).collect();
        names.dedup();
        assert_eq!(names.len(), MINIMUMS.len());
        assert_eq!(RINGBUF.since.to_string(), "5.8");
        assert_eq!(BPF_TO_BPF_CALLS.since.to_string(), "4.16");
    }

    /// `--method` and `--transport` values state their minimum in their doc comments (clap's
    /// help): it is the table's.
    #[test]
    fn method_and_transport_help_state_the_tables_minimum() {
        let help = |v: clap::builder::PossibleValue| v.get_help().unwrap().to_string();
        for m in Method::value_variants() {
            let want = format!("kernel {}+", m.minimum().since);
            let text = help(m.to_possible_value().unwrap());
            assert!(text.contains(&want), "--method {m}: {text:?} lacks {want:?}");
        }
        for t in Transport::value_variants() {
            let want = format!("kernel {}+", t.minimum().since);
            let text = help(t.to_possible_value().unwrap());
            assert!(text.contains(&want), "--transport {t}: {text:?} lacks {want:?}");
        }
    }

    #[test]
    fn transport_flag_help_states_the_ring_buffers_minimum() {
        use clap::Args as _;
        let cmd = crate::verify::probe::ProbeArgs::augment_args(clap::Command::new("t"));
        let arg = cmd.get_arguments().find(|a| a.get_id() == "transport").unwrap();
        let text = arg.get_help().unwrap().to_string();
        let want = format!("({}+)", RINGBUF.since);
        assert!(text.contains(&want), "--transport: {text:?} lacks {want:?}");
    }

    /// Docs outside this crate that state a minimum, each phrase as the table makes it.
    #[test]
    fn docs_elsewhere_state_the_tables_minimums() {
        let root = concat!(env!("CARGO_MANIFEST_DIR"), "/..");
        let phrases = [
            ("README.md", format!("(ring buffer, aya-log, {}+)", RINGBUF.since)),
            (
                "ploop-ebpf/src/lib.rs",
                format!("BPF ring buffer and aya-log, kernel {}+", RINGBUF.since),
            ),
            ("ploop-ebpf/src/lib.rs", format!("every kernel that has fentry ({}+)", FENTRY.since)),
            (
                "ploop-ebpf/src/lib.rs",
                format!(
                    "works from {}, where bpf_get_func_ret needs {}",
                    FENTRY.since, GET_FUNC_RET.since
                ),
            ),
            (
                "ploop-ebpf/src/bin/ploop-rb.rs",
                format!("Ring-buffer object (kernel {}+)", RINGBUF.since),
            ),
            (
                "ploop-ebpf/src/bin/ploop-perf.rs",
                format!("for old kernels ({}+,", PERF_EVENT_ARRAY.since),
            ),
            ("ploop-ebpf/build.rs", format!("kernels before {}", BPF_TO_BPF_CALLS.since)),
            ("ploop-common/src/lib.rs", format!("kernels before {}.", GLOBAL_DATA.since)),
        ];
        for (file, phrase) in phrases {
            let text = std::fs::read_to_string(format!("{root}/{file}")).unwrap();
            // Comments wrap: compare with line breaks and comment markers folded to spaces.
            let folded = text
                .lines()
                .map(|l| l.trim().trim_start_matches('/').trim_start_matches('!').trim())
                .collect::<Vec<_>>()
                .join(" ");
            assert!(folded.contains(&phrase), "{file} no longer says {phrase:?}");
        }
    }
}
