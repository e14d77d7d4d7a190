//! The limits of an old kernel's BPF verifier, held against an eBPF object as built: the vz7
//! host's (RHEL 7.8's 3.10, `CONTRACT.md`, "The vz7 host") for the legacy `ploop-perf`
//! object. The verifier's answer on such a host comes only at load time, on a host nobody's
//! CI has; this reads the ELF the way the kernel will see each program, so that a change
//! that breaks a limit fails a test here instead.
//!
//! Per program: its type (from its section), the maps its instructions reference, the helper
//! of every `call`, its size with the bpf-to-bpf callees the loader appends to it, no
//! back-edge, no unreachable instruction, and its stack along every call chain. And, for
//! the object: the type of every map (aya creates them all at load), and `kern_version`.

use std::{
    collections::{BTreeMap, BTreeSet},
    fmt,
};

use anyhow::{Context as _, Result, anyhow, bail};
use object::{Object as _, ObjectSection as _, ObjectSymbol as _, RelocationTarget, SectionKind};

use crate::kernel::minimums::{self, Version};

/// `enum bpf_prog_type` values a profile may allow.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord)]
pub enum ProgType {
    Kprobe,
    Tracepoint,
    PerfEvent,
    /// fentry/fexit (BPF_PROG_TYPE_TRACING).
    Tracing,
}

impl fmt::Display for ProgType {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            ProgType::Kprobe => "KPROBE",
            ProgType::Tracepoint => "TRACEPOINT",
            ProgType::PerfEvent => "PERF_EVENT",
            ProgType::Tracing => "TRACING",
        })
    }
}

/// The program type aya-obj gives a section (its name up to the first `/`), where it is one
/// of those above.
fn prog_type(section: &str) -> Option<ProgType> {
    match section.split('/').next()? {
        "kprobe" | "kretprobe" => Some(ProgType::Kprobe),
        "tracepoint" => Some(ProgType::Tracepoint),
        "perf_event" => Some(ProgType::PerfEvent),
        "fentry" | "fexit" => Some(ProgType::Tracing),
        _ => None,
    }
}

/// `enum bpf_map_type` names, for messages.
fn map_type_name(t: u32) -> String {
    let name = match t {
        1 => "HASH",
        2 => "ARRAY",
        3 => "PROG_ARRAY",
        4 => "PERF_EVENT_ARRAY",
        5 => "PERCPU_HASH",
        6 => "PERCPU_ARRAY",
        7 => "STACK_TRACE",
        9 => "LRU_HASH",
        27 => "RINGBUF",
        _ => return format!("map type {t}"),
    };
    name.to_string()
}

pub const MAP_HASH: u32 = 1;
pub const MAP_ARRAY: u32 = 2;
pub const MAP_PERF_EVENT_ARRAY: u32 = 4;
pub const MAP_PERCPU_HASH: u32 = 5;
pub const MAP_PERCPU_ARRAY: u32 = 6;
pub const MAP_LRU_HASH: u32 = 9;

/// What one kernel's verifier accepts.
#[derive(Debug)]
pub struct Profile {
    pub name: &'static str,
    pub kernel: Version,
    pub prog_types: &'static [ProgType],
    pub map_types: &'static [u32],
    pub helpers: &'static [i32],
    /// Instructions (8-byte slots, as `bpf_attr.insn_cnt` counts them) per program.
    pub max_insns: usize,
    pub max_stack: u32,
    /// `LINUX_VERSION_CODE`, which a kprobe program's `kern_version` must equal.
    pub kern_version: u32,
    /// The kernel knows the BPF_JMP32 instruction class (5.1+).
    pub jmp32: bool,
}

/// vz7 163.x on its RHEL 7.8 base (3.10.0-1127): the contract's list.
pub const VZ7: Profile = Profile {
    name: "vz7 3.10 (RHEL 7.8 base)",
    kernel: Version::new(3, 10),
    prog_types: &[ProgType::Kprobe, ProgType::Tracepoint, ProgType::PerfEvent],
    map_types: &[
        MAP_HASH,
        MAP_ARRAY,
        MAP_PERCPU_HASH,
        MAP_PERCPU_ARRAY,
        MAP_LRU_HASH,
        MAP_PERF_EVENT_ARRAY,
    ],
    // map ops 1-3, probe_read 4, ktime_get_ns 5, get_smp_processor_id 8,
    // get_current_pid_tgid 14, get_current_comm 16, perf_event_output 25, get_stackid 27,
    // get_current_task 35, probe_read_str 45, get_stack 67.
    helpers: &[1, 2, 3, 4, 5, 8, 14, 16, 25, 27, 35, 45, 67],
    max_insns: 4096,
    max_stack: 512,
    kern_version: (3 << 16) | (10 << 8),
    // BPF_JMP32 came with 5.1: a 3.10 verifier calls the class an unknown opcode.
    jmp32: false,
};

/// One instruction slot. The second slot of a 16-byte `ld_imm64` is decoded too, and
/// skipped by whoever walks the code.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Insn {
    pub op: u8,
    pub dst: u8,
    pub src: u8,
    pub off: i16,
    pub imm: i32,
}

const CLASS_LD: u8 = 0x00;
const CLASS_LDX: u8 = 0x01;
const CLASS_ST: u8 = 0x02;
const CLASS_STX: u8 = 0x03;
const CLASS_JMP: u8 = 0x05;
const CLASS_JMP32: u8 = 0x06;
const CLASS_ALU64: u8 = 0x07;
const LD_IMM64: u8 = 0x18;
const JA: u8 = 0x00;
const CALL: u8 = 0x80;
const EXIT: u8 = 0x90;
const ALU_ADD: u8 = 0x00;
const ALU_SUB: u8 = 0x10;
const ALU_MOV: u8 = 0xb0;
const SRC_REG: u8 = 0x08;
/// `src_reg` of a bpf-to-bpf call.
const PSEUDO_CALL: u8 = 1;
const FP: u8 = 10;

impl Insn {
    pub fn decode(b: &[u8; 8]) -> Insn {
        Insn {
            op: b[0],
            dst: b[1] & 0x0f,
            src: b[1] >> 4,
            off: i16::from_le_bytes([b[2], b[3]]),
            imm: i32::from_le_bytes([b[4], b[5], b[6], b[7]]),
        }
    }
    fn class(self) -> u8 {
        self.op & 0x07
    }
    fn code(self) -> u8 {
        self.op & 0xf0
    }
    fn is_jmp(self) -> bool {
        matches!(self.class(), CLASS_JMP | CLASS_JMP32)
    }
    fn is_call(self) -> bool {
        self.class() == CLASS_JMP && self.code() == CALL
    }
    fn is_exit(self) -> bool {
        self.class() == CLASS_JMP && self.code() == EXIT
    }
    /// A jump with a target (`ja` or a conditional jump).
    fn is_branch(self) -> bool {
        self.is_jmp() && !matches!(self.code(), CALL | EXIT)
    }
    /// Slots this instruction takes.
    fn width(self) -> usize {
        if self.op == LD_IMM64 { 2 } else { 1 }
    }
}

/// A function of the object, with what its relocations resolve to.
#[derive(Clone, Debug)]
pub struct Function {
    pub name: String,
    pub section: String,
    /// A program (a global function in a program section), not a `.text` callee.
    pub program: bool,
    pub insns: Vec<Insn>,
    /// Slot of a bpf-to-bpf call -> the called function (an index into the object's list).
    pub calls: BTreeMap<usize, usize>,
    /// Slot of an `ld_imm64` of a map -> the map's name.
    pub maps: BTreeMap<usize, String>,
}

/// What the checker reads from an object.
#[derive(Clone, Debug, Default)]
pub struct Image {
    pub functions: Vec<Function>,
    /// Every map of the object and its `bpf_map_type`.
    pub maps: BTreeMap<String, u32>,
    /// The `version` section's value: aya passes it as `kern_version` when present.
    pub version: Option<u32>,
    /// What could not be resolved (a call into the middle of a function, ...).
    pub problems: Vec<String>,
}

/// One program held against the profile.
#[derive(Clone, Debug)]
pub struct ProgramVerdict {
    pub name: String,
    pub section: String,
    /// Slots, the program's own and its callees', as the loader hands them to the kernel.
    pub insns: usize,
    /// Bytes: the deepest r10-relative access of each frame, summed along the deepest chain.
    pub stack: u32,
    pub helpers: BTreeSet<i32>,
    pub maps: BTreeSet<String>,
    pub problems: Vec<String>,
}

/// An object held against a profile.
#[derive(Clone, Debug)]
pub struct Verdict {
    pub profile: &'static str,
    pub programs: Vec<ProgramVerdict>,
    /// Programs this kernel never gets, and why.
    pub skipped: Vec<(String, String)>,
    pub problems: Vec<String>,
}

impl Verdict {
    pub fn passed(&self) -> bool {
        self.problems.is_empty() && self.programs.iter().all(|p| p.problems.is_empty())
    }

    /// Every failure as `program: reason` (`object: reason` for the object's own).
    pub fn failures(&self) -> Vec<String> {
        let object = self.problems.iter().map(|p| format!("object: {p}"));
        let programs = self
            .programs
            .iter()
            .flat_map(|p| p.problems.iter().map(|r| format!("{}: {r}", p.name)));
        object.chain(programs).collect()
    }

    /// The largest program and the deepest stack, by name.
    fn largest(&self) -> Option<(&ProgramVerdict, &ProgramVerdict)> {
        let insns = self.programs.iter().max_by_key(|p| p.insns)?;
        let stack = self.programs.iter().max_by_key(|p| p.stack)?;
        Some((insns, stack))
    }
}

impl fmt::Display for Verdict {
    /// One line: the verdict, the figures, what was not held to the profile.
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let failures = self.failures();
        if failures.is_empty() {
            write!(f, "{}: {} programs pass", self.profile, self.programs.len())?;
        } else {
            write!(f, "{}: FAILS: {}", self.profile, failures.join("; "))?;
        }
        if let Some((i, s)) = self.largest() {
            write!(
                f,
                " (largest {} insns: {}; deepest stack {} B: {})",
                i.insns, i.name, s.stack, s.name
            )?;
        }
        if !self.skipped.is_empty() {
            let why: BTreeSet<&str> = self.skipped.iter().map(|(_, w)| w.as_str()).collect();
            let why: Vec<&str> = why.into_iter().collect();
            write!(f, "; {} not loaded there ({})", self.skipped.len(), why.join("; "))?;
        }
        Ok(())
    }
}

/// Reads an eBPF ELF object the way aya-obj does: programs are the global functions of the
/// program sections, callees the functions of `.text`, maps the symbols of `maps` (legacy
/// `bpf_map_def`: the type is its first `u32`).
pub fn read_object(bytes: &[u8]) -> Result<Image> {
    let obj = object::File::parse(bytes).context("parsing the eBPF object")?;
    let mut image = Image::default();
    let maps_section = obj.section_by_name("maps");
    if let Some(s) = &maps_section {
        let data = s.data()?;
        for sym in obj.symbols().filter(|y| y.section_index() == Some(s.index())) {
            let Ok(name) = sym.name() else { continue };
            if sym.kind() == object::SymbolKind::Section || name.is_empty() {
                continue;
            }
            let at = sym.address() as usize;
            let ty = data
                .get(at..at + 4)
                .map(|b| u32::from_le_bytes(b.try_into().expect("4 bytes")))
                .ok_or_else(|| anyhow!("map {name} lies outside the maps section"))?;
            image.maps.insert(name.to_string(), ty);
        }
    }
    if obj.section_by_name(".maps").is_some() {
        // BTF-defined maps keep their type in BTF only: not read here, so say so.
        image.problems.push(".maps (BTF-defined maps): their types are not checked".into());
    }
    if let Some(v) = obj.section_by_name("version") {
        let d = v.data()?;
        let b: [u8; 4] = d.get(..4).and_then(|b| b.try_into().ok()).context("version section")?;
        image.version = Some(u32::from_le_bytes(b));
    }
    // Functions by (section, first slot), so that calls can find their targets.
    let mut at: BTreeMap<(usize, usize), usize> = BTreeMap::new();
    let code: Vec<_> = obj.sections().filter(|s| s.kind() == SectionKind::Text).collect();
    for s in &code {
        let name = s.name()?.to_string();
        let data = s.data()?;
        let mut syms: Vec<_> = obj
            .symbols()
            .filter(|y| {
                y.section_index() == Some(s.index()) && y.kind() == object::SymbolKind::Text
            })
            .collect();
        syms.sort_by_key(|y| y.address());
        for sym in syms {
            let (start, size) = (sym.address() as usize, sym.size() as usize);
            let bytes = data
                .get(start..start + size)
                .ok_or_else(|| anyhow!("{} lies outside {name}", sym.name().unwrap_or("?")))?;
            if start % 8 != 0 || size % 8 != 0 {
                bail!("{} in {name} is not made of 8-byte instructions", sym.name()?);
            }
            let insns = bytes.as_chunks::<8>().0.iter().map(Insn::decode).collect();
            at.insert((s.index().0, start / 8), image.functions.len());
            image.functions.push(Function {
                name: sym.name()?.to_string(),
                section: name.clone(),
                program: name != ".text" && sym.is_global(),
                insns,
                calls: BTreeMap::new(),
                maps: BTreeMap::new(),
            });
        }
    }
    // The function holding `slot` of `section`, and the slot's index in it.
    let owner = |section: object::SectionIndex, slot: usize| -> Option<(usize, usize)> {
        let section = section.0;
        let (&(sec, start), &f) = at.range(..=(section, slot)).next_back()?;
        (sec == section).then_some((f, slot - start))
    };
    for s in &code {
        let relocs: BTreeMap<usize, RelocationTarget> =
            s.relocations().map(|(offset, r)| (offset as usize / 8, r.target())).collect();
        let starts: Vec<(usize, usize)> = at
            .iter()
            .filter(|((sec, _), _)| *sec == s.index().0)
            .map(|(&(_, st), &f)| (st, f))
            .collect();
        for (start, f) in starts {
            for i in 0..image.functions[f].insns.len() {
                let insn = image.functions[f].insns[i];
                let slot = start + i;
                let reloc = relocs.get(&slot).and_then(|t| match t {
                    RelocationTarget::Symbol(idx) => obj.symbol_by_index(*idx).ok(),
                    _ => None,
                });
                if insn.is_call() && insn.src == PSEUDO_CALL {
                    // libbpf's rule: the target is the symbol's slot (or this one's) + imm + 1.
                    let (section, base) = match &reloc {
                        Some(sym) => match sym.section_index() {
                            Some(sec) => (sec, sym.address() as i64 / 8),
                            None => {
                                image.problems.push(format!(
                                    "{}: call to an undefined {}",
                                    image.functions[f].name,
                                    sym.name().unwrap_or("?")
                                ));
                                continue;
                            }
                        },
                        None => (s.index(), slot as i64),
                    };
                    let target = base + i64::from(insn.imm) + 1;
                    match usize::try_from(target).ok().and_then(|t| owner(section, t)) {
                        Some((callee, 0)) => {
                            image.functions[f].calls.insert(i, callee);
                        }
                        _ => image.problems.push(format!(
                            "{}: call at insn {i} lands in no function's entry",
                            image.functions[f].name
                        )),
                    }
                } else if insn.op == LD_IMM64
                    && let Some(sym) = &reloc
                    && maps_section.as_ref().is_some_and(|m| sym.section_index() == Some(m.index()))
                {
                    let name = match sym.kind() {
                        // Against the section: the map is the one at the offset in imm.
                        object::SymbolKind::Section => obj
                            .symbols()
                            .find(|y| {
                                y.section_index() == sym.section_index()
                                    && y.address() == insn.imm as u64
                                    && y.kind() != object::SymbolKind::Section
                            })
                            .and_then(|y| y.name().ok())
                            .unwrap_or("?")
                            .to_string(),
                        _ => sym.name().unwrap_or("?").to_string(),
                    };
                    image.functions[f].maps.insert(i, name);
                }
            }
        }
    }
    Ok(image)
}

/// Holds every program of `image` against `profile`.
pub fn check(profile: &Profile, image: &Image) -> Verdict {
    let mut problems = image.problems.clone();
    for (name, &ty) in &image.maps {
        if !profile.map_types.contains(&ty) {
            problems.push(format!("map {name} is {}, which the kernel lacks", map_type_name(ty)));
        }
    }
    match image.version {
        // aya 0.16 passes the running kernel's version (from its release: 3.10.0 on RHEL 7)
        // when the object has none: equal to LINUX_VERSION_CODE there.
        None => {}
        Some(v) if v == profile.kern_version => {}
        Some(v) => problems.push(format!(
            "the version section says {v:#x}: kprobes need kern_version {:#x}",
            profile.kern_version
        )),
    }
    let mut programs = Vec::new();
    let mut skipped = Vec::new();
    for (i, f) in image.functions.iter().enumerate().filter(|(_, f)| f.program) {
        match prog_type(&f.section) {
            Some(ProgType::Tracing) if !profile.prog_types.contains(&ProgType::Tracing) => {
                // The tool loads these only for --method fentry, which needs kernel BTF.
                skipped.push((
                    f.name.clone(),
                    format!(
                        "fentry/fexit need {}+ with kernel BTF: loaded only for --method fentry",
                        minimums::FENTRY.since
                    ),
                ));
            }
            _ => programs.push(check_program(profile, image, i)),
        }
    }
    Verdict { profile: profile.name, programs, skipped, problems }
}

/// `kern_version` as aya 0.16 sets it for a kprobe: the object's version section, else the
/// running kernel's version (`running`: aya's reading of uname, which on RHEL 7 is the
/// release's first three numbers), and whether that is the profile's `LINUX_VERSION_CODE`.
pub fn kern_version(
    profile: &Profile,
    image: &Image,
    running: Option<u32>,
) -> Result<String, String> {
    let (v, from) = match (image.version, running) {
        (Some(v), _) => (v, "the object's version section"),
        (None, Some(v)) => (v, "aya, from the running kernel's release"),
        (None, None) => {
            return Err("aya cannot read the running kernel's version: it passes 0".into());
        }
    };
    let text = format!("kern_version {v:#x} ({from})");
    if v == profile.kern_version {
        Ok(format!("{text} = LINUX_VERSION_CODE"))
    } else {
        Err(format!("{text}, but kprobes need {:#x}", profile.kern_version))
    }
}

/// The facts of one function: what the verifier asks of each function on its own.
struct Facts {
    /// Deepest r10-relative byte the function touches or hands out a pointer to.
    depth: u32,
    problems: Vec<String>,
    helpers: BTreeSet<i32>,
}

fn check_program(profile: &Profile, image: &Image, prog: usize) -> ProgramVerdict {
    let f = &image.functions[prog];
    let mut problems = Vec::new();
    match prog_type(&f.section) {
        Some(t) if profile.prog_types.contains(&t) => {}
        Some(t) => problems.push(format!("program type {t} (section {})", f.section)),
        None => problems.push(format!("section {}: no program type the kernel has", f.section)),
    }
    // The loader appends every callee once, whatever calls it.
    let mut reach = BTreeSet::from([prog]);
    let mut todo = vec![prog];
    while let Some(g) = todo.pop() {
        for &c in image.functions[g].calls.values() {
            if reach.insert(c) {
                todo.push(c);
            }
        }
    }
    let mut helpers = BTreeSet::new();
    let mut maps = BTreeSet::new();
    let mut depth = BTreeMap::new();
    for &g in &reach {
        let func = &image.functions[g];
        let facts = facts(profile, func);
        let who = if g == prog { String::new() } else { format!("in callee {}: ", func.name) };
        problems.extend(facts.problems.into_iter().map(|p| format!("{who}{p}")));
        helpers.extend(facts.helpers);
        maps.extend(func.maps.values().cloned());
        depth.insert(g, facts.depth);
    }
    for h in &helpers {
        if !profile.helpers.contains(h) {
            problems.push(format!("helper {h} is not in the kernel's list"));
        }
    }
    for m in &maps {
        match image.maps.get(m) {
            Some(ty) if profile.map_types.contains(ty) => {}
            Some(&ty) => problems.push(format!("uses map {m}, a {}", map_type_name(ty))),
            None => problems.push(format!("uses map {m}, which the object does not define")),
        }
    }
    let insns: usize = reach.iter().map(|&g| image.functions[g].insns.len()).sum();
    if insns > profile.max_insns {
        problems.push(format!("{insns} instructions, over the limit of {}", profile.max_insns));
    }
    let stack = match chain_depth(image, &depth, prog, &mut Vec::new()) {
        Ok(s) => s,
        Err(cycle) => {
            problems.push(format!("recursive calls: {cycle}"));
            0
        }
    };
    if stack > profile.max_stack {
        problems.push(format!("{stack} bytes of stack, over the limit of {}", profile.max_stack));
    }
    ProgramVerdict {
        name: f.name.clone(),
        section: f.section.clone(),
        insns,
        stack,
        helpers,
        maps,
        problems,
    }
}

/// The deepest stack along the call chains from `f`: its frame plus its deepest callee's.
fn chain_depth(
    image: &Image,
    depth: &BTreeMap<usize, u32>,
    f: usize,
    path: &mut Vec<usize>,
) -> Result<u32, String> {
    if path.contains(&f) {
        let names: Vec<&str> =
            path.iter().chain([&f]).map(|&g| image.functions[g].name.as_str()).collect();
        return Err(names.join(" -> "));
    }
    path.push(f);
    let mut deepest = 0;
    for &c in image.functions[f].calls.values() {
        deepest = deepest.max(chain_depth(image, depth, c, path)?);
    }
    path.pop();
    Ok(depth[&f] + deepest)
}

/// One function against the verifier's per-function rules: every jump forward and inside it,
/// every instruction reachable from its entry, no path falling off its end, the helpers it
/// calls, and its stack frame.
fn facts(profile: &Profile, f: &Function) -> Facts {
    let insns = &f.insns;
    let n = insns.len();
    let mut problems = Vec::new();
    let mut helpers = BTreeSet::new();
    // Slots that start an instruction (not the second half of an ld_imm64).
    let mut starts = vec![false; n];
    let mut i = 0;
    while i < n {
        starts[i] = true;
        i += insns[i].width();
    }
    if n > 0 && insns[n - 1].op == LD_IMM64 && starts[n - 1] {
        problems.push(format!("insn {}: ld_imm64 cut off at the end", n - 1));
    }
    for (pc, insn) in insns.iter().enumerate().filter(|&(pc, _)| starts[pc]) {
        if insn.class() == CLASS_JMP32 && !profile.jmp32 {
            problems.push(format!("insn {pc}: a BPF_JMP32 instruction (5.1+)"));
        }
        if insn.is_call() && insn.src != PSEUDO_CALL {
            helpers.insert(insn.imm);
        }
        if insn.is_branch() {
            let target = pc as i64 + i64::from(insn.off) + 1;
            if target < 0 || target >= n as i64 {
                problems.push(format!("insn {pc}: jump to {target}, outside the function"));
            } else if !starts[target as usize] {
                problems.push(format!("insn {pc}: jump to {target}, which starts no instruction"));
            }
        }
    }
    // The kernel's check_cfg: depth-first from the entry, the fall-through edge before the
    // jump's, `exit` ends a path. A back-edge is an edge to an instruction still on the
    // path, a loop; a backward jump to code already explored is not one (LLVM makes those
    // when it shares a tail block, and the verifier takes them).
    #[derive(Clone, Copy, PartialEq)]
    enum State {
        New,
        OnPath,
        Done,
    }
    let mut state = vec![State::New; n];
    let edges = |pc: usize| -> Vec<i64> {
        let insn = insns[pc];
        let next = (pc + insn.width()) as i64;
        let target = pc as i64 + i64::from(insn.off) + 1;
        match () {
            _ if insn.is_exit() => vec![],
            _ if insn.is_branch() && insn.code() == JA => vec![target],
            _ if insn.is_branch() => vec![next, target],
            _ => vec![next],
        }
    };
    // (instruction, its edges not yet followed)
    let mut path: Vec<(usize, std::vec::IntoIter<i64>)> = Vec::new();
    if n > 0 {
        state[0] = State::OnPath;
        path.push((0, edges(0).into_iter()));
    }
    let mut fell_off = false;
    while let Some((pc, rest)) = path.last_mut() {
        let pc = *pc;
        let Some(w) = rest.next() else {
            state[pc] = State::Done;
            path.pop();
            continue;
        };
        if w >= n as i64 && !insns[pc].is_branch() {
            fell_off = true;
            continue;
        }
        // Out of range or mid-instruction: reported above.
        let Some(w) = usize::try_from(w).ok().filter(|&w| w < n && starts[w]) else { continue };
        match state[w] {
            State::New => {
                state[w] = State::OnPath;
                path.push((w, edges(w).into_iter()));
            }
            State::OnPath => problems.push(format!("back-edge from insn {pc} to insn {w}")),
            State::Done => {}
        }
    }
    if fell_off {
        problems.push(format!("a path falls off the end of {}", f.name));
    }
    let seen: Vec<bool> = state.iter().map(|s| *s != State::New).collect();
    let unreachable: Vec<usize> = (0..n).filter(|&pc| starts[pc] && !seen[pc]).collect();
    if let Some(&first) = unreachable.first() {
        problems.push(format!(
            "{} unreachable instruction(s), the first at insn {first}",
            unreachable.len()
        ));
    }
    Facts { depth: frame_depth(insns, &starts), problems, helpers }
}

/// The deepest byte below r10 the function reaches: loads and stores through r10 or a
/// register copied from it, and pointers made from it (`rN = r10; rN += -16`, handed to a
/// helper that writes there). A straight pass: LLVM derives such a pointer just before its
/// use, and a register written any other way stops being one.
fn frame_depth(insns: &[Insn], starts: &[bool]) -> u32 {
    let mut fp: [Option<i64>; 11] = [None; 11];
    fp[FP as usize] = Some(0);
    let mut deepest: i64 = 0;
    let mut note = |at: i64| deepest = deepest.max(-at);
    for (pc, insn) in insns.iter().enumerate() {
        if !starts[pc] {
            continue;
        }
        let (dst, src) = (insn.dst as usize, insn.src as usize);
        if dst > 10 || src > 10 {
            continue;
        }
        match insn.class() {
            CLASS_ST | CLASS_STX => {
                if let Some(base) = fp[dst] {
                    note(base + i64::from(insn.off));
                }
            }
            CLASS_LDX => {
                if let Some(base) = fp[src] {
                    note(base + i64::from(insn.off));
                }
                fp[dst] = None;
            }
            CLASS_ALU64 => {
                let by_reg = insn.op & SRC_REG != 0;
                fp[dst] = match (insn.code(), by_reg, fp[dst]) {
                    (ALU_MOV, true, _) => fp[src],
                    (ALU_ADD, false, Some(b)) => Some(b + i64::from(insn.imm)),
                    (ALU_SUB, false, Some(b)) => Some(b - i64::from(insn.imm)),
                    _ => None,
                };
                if let Some(at) = fp[dst] {
                    note(at);
                }
            }
            CLASS_LD => fp[dst] = None,
            // r0-r5 do not survive a call; other jumps write no register.
            CLASS_JMP if insn.is_call() => fp[..=5].fill(None),
            CLASS_JMP | CLASS_JMP32 => {}
            // ALU32 and anything else that writes `dst`.
            _ => fp[dst] = None,
        }
        fp[FP as usize] = Some(0);
    }
    deepest.max(0) as u32
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Hand assembly: just what the tests need.
    fn mov64_imm(dst: u8, imm: i32) -> Insn {
        Insn { op: 0xb7, dst, src: 0, off: 0, imm }
    }
    fn mov64_reg(dst: u8, src: u8) -> Insn {
        Insn { op: 0xbf, dst, src, off: 0, imm: 0 }
    }
    fn add64_imm(dst: u8, imm: i32) -> Insn {
        Insn { op: 0x07, dst, src: 0, off: 0, imm }
    }
    fn stx_dw(dst: u8, off: i16, src: u8) -> Insn {
        Insn { op: 0x7b, dst, src, off, imm: 0 }
    }
    fn jeq_imm(dst: u8, imm: i32, off: i16) -> Insn {
        Insn { op: 0x15, dst, src: 0, off, imm }
    }
    fn ja(off: i16) -> Insn {
        Insn { op: 0x05, dst: 0, src: 0, off, imm: 0 }
    }
    fn call(helper: i32) -> Insn {
        Insn { op: 0x85, dst: 0, src: 0, off: 0, imm: helper }
    }
    fn call_local() -> Insn {
        Insn { op: 0x85, dst: 0, src: PSEUDO_CALL, off: 0, imm: -1 }
    }
    fn ld_imm64(dst: u8, src: u8) -> [Insn; 2] {
        [
            Insn { op: LD_IMM64, dst, src, off: 0, imm: 0 },
            Insn { op: 0, dst: 0, src: 0, off: 0, imm: 0 },
        ]
    }
    fn exit() -> Insn {
        Insn { op: 0x95, dst: 0, src: 0, off: 0, imm: 0 }
    }

    fn program(section: &str, insns: Vec<Insn>) -> Function {
        Function {
            name: "p".into(),
            section: section.into(),
            program: true,
            insns,
            calls: BTreeMap::new(),
            maps: BTreeMap::new(),
        }
    }

    fn one(f: Function) -> Verdict {
        check(&VZ7, &Image { functions: vec![f], ..Image::default() })
    }

    fn failures(f: Function) -> String {
        let v = one(f);
        assert!(!v.passed(), "{v}");
        v.failures().join("\n")
    }

    /// The smallest program that passes, so that each test below breaks one rule only.
    fn fine() -> Vec<Insn> {
        vec![mov64_imm(0, 0), call(5), stx_dw(FP, -8, 0), jeq_imm(0, 0, 1), mov64_imm(0, 1), exit()]
    }

    #[test]
    fn a_fine_program_passes_with_its_figures() {
        let v = one(program("kprobe", fine()));
        assert!(v.passed(), "{v}");
        assert_eq!((v.programs[0].insns, v.programs[0].stack), (6, 8));
        assert_eq!(v.programs[0].helpers, BTreeSet::from([5]));
    }

    #[test]
    fn a_loop_is_a_back_edge() {
        let mut insns = fine();
        insns.insert(5, jeq_imm(0, 7, -3));
        let why = failures(program("kprobe", insns));
        assert!(why.contains("p: back-edge from insn 5 to insn 3"), "{why}");
        // A jump to itself is one too.
        let why = failures(program("kprobe", vec![ja(-1), exit()]));
        assert!(why.contains("back-edge from insn 0 to insn 0"), "{why}");
    }

    /// A backward jump to a block already explored (a shared tail) is no loop: the kernel
    /// takes it, and LLVM emits such jumps in the legacy object.
    #[test]
    fn a_backward_jump_to_explored_code_is_no_back_edge() {
        let insns = vec![jeq_imm(1, 0, 2), mov64_imm(0, 1), exit(), mov64_imm(0, 2), ja(-3)];
        let v = one(program("kprobe", insns));
        assert!(v.passed(), "{v}");
    }

    #[test]
    fn dead_code_is_unreachable() {
        let mut insns = fine();
        insns.extend([mov64_imm(0, 2), exit()]);
        let why = failures(program("tracepoint", insns));
        assert!(why.contains("p: 2 unreachable instruction(s), the first at insn 6"), "{why}");
        // Jumped over.
        let why = failures(program("kprobe", vec![ja(1), mov64_imm(0, 1), exit()]));
        assert!(why.contains("the first at insn 1"), "{why}");
    }

    #[test]
    fn ld_imm64_is_one_instruction_of_two_slots() {
        let [a, b] = ld_imm64(1, 0);
        // A jump over the 16-byte load lands after both slots; neither slot is dead code.
        let v = one(program("kprobe", vec![jeq_imm(1, 0, 2), a, b, mov64_imm(0, 0), exit()]));
        assert!(v.passed(), "{v}");
        assert_eq!(v.programs[0].insns, 5, "slots, as insn_cnt counts them");
        // A jump into its second slot is no jump to an instruction.
        let why = failures(program("kprobe", vec![jeq_imm(1, 0, 1), a, b, exit()]));
        assert!(why.contains("insn 0: jump to 2, which starts no instruction"), "{why}");
    }

    #[test]
    fn a_path_off_the_end_fails() {
        let why = failures(program("kprobe", vec![jeq_imm(1, 0, 1), exit(), mov64_imm(0, 0)]));
        assert!(why.contains("falls off the end"), "{why}");
    }

    #[test]
    fn a_helper_off_the_list_fails() {
        let mut insns = fine();
        // bpf_probe_read_kernel (113, 5.5+).
        insns.insert(0, call(113));
        let why = failures(program("kprobe", insns));
        assert!(why.contains("p: helper 113 is not in the kernel's list"), "{why}");
    }

    #[test]
    fn a_600_byte_frame_is_over_the_stack_limit() {
        let mut insns = fine();
        insns.insert(0, stx_dw(FP, -600, 1));
        let why = failures(program("kprobe", insns));
        assert!(why.contains("p: 600 bytes of stack, over the limit of 512"), "{why}");
        // A pointer made from r10 and handed out counts as deep as it points.
        let insns = vec![mov64_reg(1, FP), add64_imm(1, -520), call(4), mov64_imm(0, 0), exit()];
        let v = one(program("kprobe", insns));
        assert_eq!(v.programs[0].stack, 520, "{v}");
        assert!(!v.passed());
    }

    #[test]
    fn callees_count_into_their_callers_size_and_stack() {
        let mut caller = program("kprobe", vec![call_local(), stx_dw(FP, -300, 0), exit()]);
        caller.calls.insert(0, 1);
        let callee = Function {
            name: "helper_fn".into(),
            section: ".text".into(),
            program: false,
            insns: vec![stx_dw(FP, -256, 1), call(999), mov64_imm(0, 0), exit()],
            calls: BTreeMap::new(),
            maps: BTreeMap::new(),
        };
        let v = check(&VZ7, &Image { functions: vec![caller, callee], ..Image::default() });
        let p = &v.programs[0];
        assert_eq!((p.insns, p.stack), (7, 556));
        let why = v.failures().join("\n");
        assert!(why.contains("p: 556 bytes of stack, over the limit of 512"), "{why}");
        assert!(why.contains("p: helper 999 is not in the kernel's list"), "{why}");
        assert_eq!(v.programs.len(), 1, "a callee is no program of its own");
    }

    #[test]
    fn too_many_instructions_fail() {
        let mut insns = vec![mov64_imm(0, 0); 4096];
        insns.push(exit());
        let why = failures(program("kprobe", insns));
        assert!(why.contains("p: 4097 instructions, over the limit of 4096"), "{why}");
    }

    #[test]
    fn program_and_map_types_outside_the_list_fail() {
        let why = failures(program("raw_tracepoint/sys_enter", fine()));
        assert!(why.contains("section raw_tracepoint/sys_enter: no program type"), "{why}");
        let mut p = program("kprobe", fine());
        p.maps.insert(0, "EVENTS".into());
        let image = Image {
            functions: vec![p],
            maps: BTreeMap::from([("EVENTS".into(), 27)]),
            ..Image::default()
        };
        let why = check(&VZ7, &image).failures().join("\n");
        assert!(why.contains("object: map EVENTS is RINGBUF"), "{why}");
        assert!(why.contains("p: uses map EVENTS, a RINGBUF"), "{why}");
    }

    #[test]
    fn fentry_programs_are_set_aside_and_a_wrong_version_fails() {
        let image = Image {
            functions: vec![program("fentry", fine())],
            version: Some(0x050a00),
            ..Image::default()
        };
        let v = check(&VZ7, &image);
        assert!(v.programs.is_empty() && v.skipped.len() == 1, "{v}");
        assert!(v.failures()[0].contains("kern_version 0x30a00"), "{v}");
    }

    #[test]
    fn kern_version_is_the_sections_else_the_running_kernels() {
        let none = Image::default();
        assert!(kern_version(&VZ7, &none, Some(0x030a00)).unwrap().contains("from the running"));
        assert!(kern_version(&VZ7, &none, Some(0x060100)).is_err());
        assert!(kern_version(&VZ7, &none, None).is_err());
        let pinned = Image { version: Some(0x030a00), ..Image::default() };
        assert!(kern_version(&VZ7, &pinned, Some(0x060100)).unwrap().contains("section"));
    }

    /// The ring-buffer object has what the legacy one must not: bpf-to-bpf calls into
    /// `.text` (aya-log's), relocated against the section. They resolve to a function's entry,
    /// and the callee counts into its caller. It also fails the vz7 profile, as it should.
    #[test]
    fn calls_into_text_resolve_in_the_ring_buffer_object() {
        let image = read_object(crate::verify::probe::OBJ_RINGBUF).unwrap();
        assert!(image.problems.is_empty(), "{:?}", image.problems);
        let (caller, callee) = image
            .functions
            .iter()
            .filter(|f| f.program)
            .find_map(|f| f.calls.values().next().map(|&c| (f, &image.functions[c])))
            .expect("a program with a bpf-to-bpf call");
        assert_eq!(callee.section, ".text");
        let v = check(&VZ7, &image);
        let p = v.programs.iter().find(|p| p.name == caller.name).unwrap();
        assert!(p.insns >= caller.insns.len() + callee.insns.len(), "{} {}", p.name, p.insns);
        let why = v.failures().join("\n");
        assert!(why.contains("object: map PLOOP_EVENTS is RINGBUF"), "{why}");
    }

    /// A change to the built object that breaks a rule fails, naming the program.
    #[test]
    fn a_broken_program_in_the_built_object_is_named() {
        let mut image = read_object(crate::verify::probe::OBJ_PERF).unwrap();
        let f = image.functions.iter_mut().find(|f| f.name == "sys_exit_ioctl").unwrap();
        let at = f.insns.iter().position(|i| i.is_call() && i.src == 0).unwrap();
        f.insns[at].imm = 113;
        f.insns.push(exit());
        let why = check(&VZ7, &image).failures().join("\n");
        assert!(why.contains("sys_exit_ioctl: helper 113 is not in the kernel's list"), "{why}");
        assert!(why.contains("sys_exit_ioctl: 1 unreachable instruction(s)"), "{why}");
        assert!(!why.contains("sys_enter_ioctl"), "{why}");
    }

    /// The legacy object as built: every program the vz7 host loads is held to its verifier.
    /// The figures go to the test's output (`--nocapture`).
    #[test]
    fn the_legacy_object_fits_the_vz7_verifier() {
        let image = read_object(crate::verify::probe::OBJ_PERF).unwrap();
        let v = check(&VZ7, &image);
        for p in &v.programs {
            println!(
                "{:<32} {:<10} {:>5} insns {:>4} B stack",
                p.name, p.section, p.insns, p.stack
            );
        }
        println!("{v}");
        assert!(
            v.passed(),
            "the legacy object breaks the vz7 verifier:\n{}",
            v.failures().join("\n")
        );
        // Every kprobe and tracepoint program the kprobe plan attaches is among those held.
        assert!(v.programs.len() >= 16, "{v}");
        assert!(v.programs.iter().any(|p| p.name == "sys_enter_ioctl"));
        let maps: BTreeSet<&str> =
            v.programs.iter().flat_map(|p| p.maps.iter().map(String::as_str)).collect();
        assert!(maps.contains("PLOOP_EVENTS") && maps.contains("PLOOP_CONFIG"), "{maps:?}");
    }
}
