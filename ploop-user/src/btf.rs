//! Struct offsets from the kernel's BTF, handed to the eBPF programs (which have no CO-RE
//! relocations). `block_device.bd_dev` moves between kernels: 36 on 6.1, 52 on 6.12.
//! [`crate::offsets`] decides between this and DWARF.

use std::path::Path;

use anyhow::{Context as _, Result, anyhow, bail};
use btf_rs::{Btf, Type};

pub const SYS_BTF: &str = "/sys/kernel/btf/vmlinux";

/// Read whole, then parsed: btf-rs parsing straight from the file seeks once per string
/// (about 100k lseeks for vmlinux), which cost seconds of start-up in a TCG guest.
pub fn load(path: &Path) -> Result<Btf> {
    std::fs::read(path)
        .map_err(anyhow::Error::from)
        .and_then(|bytes| Btf::from_bytes(&bytes).map_err(|e| anyhow!("{e}")))
        .with_context(|| {
            format!("reading BTF from {} (name another with --btf FILE)", path.display())
        })
}

/// Byte offset of `member` in `struct name`, looking through anonymous struct/union members.
pub fn member_offset(btf: &Btf, name: &str, member: &str) -> Result<u64> {
    let types = btf.resolve_types_by_name(name).map_err(|e| anyhow!("{e}"))?;
    let st = types
        .iter()
        .find_map(|t| match t {
            Type::Struct(s) if !s.members.is_empty() => Some(s),
            _ => None,
        })
        .ok_or_else(|| anyhow!("struct {name} is not in the BTF"))?;
    find_member(btf, st, member)?
        .map(|bits| bits / 8)
        .ok_or_else(|| anyhow!("struct {name} has no member {member} in the BTF"))
}

fn find_member(btf: &Btf, st: &btf_rs::Struct, member: &str) -> Result<Option<u64>> {
    for m in &st.members {
        let mname = btf.resolve_name(m).unwrap_or_default();
        if mname == member {
            if m.bitfield_size().is_some_and(|b| b != 0) {
                bail!("{member} is a bitfield");
            }
            return Ok(Some(u64::from(m.bit_offset())));
        }
        if mname.is_empty() {
            let ty = btf.resolve_chained_type(m).map_err(|e| anyhow!("{e}"))?;
            let ty = skip_modifiers(btf, ty)?;
            if let Type::Struct(inner) | Type::Union(inner) = &ty
                && let Some(off) = find_member(btf, inner, member)?
            {
                return Ok(Some(u64::from(m.bit_offset()) + off));
            }
        }
    }
    Ok(None)
}

fn skip_modifiers(btf: &Btf, mut ty: Type) -> Result<Type> {
    while let Type::Typedef(_) | Type::Const(_) | Type::Volatile(_) = ty {
        let next = ty.as_btf_type().expect("modifier types are BtfType");
        ty = btf.resolve_chained_type(next).map_err(|e| anyhow!("{e}"))?;
    }
    Ok(ty)
}
