//! The model driver's C header, `tests/ploop-model/ploop_if.h`, generated from the one ploop
//! ABI in `ploop_common::ploop_if`, so the C side can never drift from what the probes and
//! the checker believe (it did: PLOOP_IOC_CLEAR was `_IO('P', 6)` on both sides, which is
//! vz7's TRACK_INIT).

use std::{fmt::Write as _, path::PathBuf};

use ploop_common::ploop_if::{C_DEFINES, C_STRUCTS};

/// Where the generated header lives.
pub fn header_path() -> PathBuf {
    crate::root().join("tests/ploop-model/ploop_if.h")
}

/// The header's text.
pub fn render() -> String {
    let mut h = String::new();
    h.push_str(
        "/* SPDX-License-Identifier: GPL-2.0 */\n\
         /*\n \
         * ploop_if.h - the ploop ioctl ABI (x86-64), as include/ploop_if.h of the\n \
         * OpenVZ ploop tools defines it, for the ploop model driver.\n \
         *\n \
         * GENERATED from ploop-common/src/ploop_if.rs by `cargo xtask gen-ploop-if`:\n \
         * do not edit; the xtask test ploop_if_h_is_current fails when it differs.\n \
         */\n\
         #ifndef PLOOP_MODEL_IF_H\n\
         #define PLOOP_MODEL_IF_H\n\n\
         #include <linux/types.h>\n\
         #include <linux/ioctl.h>\n\n\
         #define PLOOPCTLTYPE\t'P'\n\n",
    );
    let (ioctls, values): (Vec<_>, Vec<_>) =
        C_DEFINES.iter().partition(|d| d.name.starts_with("PLOOP_IOC_"));
    for d in values {
        let _ = writeln!(h, "#define {:<24}{}", d.name, d.c);
    }
    h.push('\n');
    for s in C_STRUCTS {
        let _ = writeln!(h, "struct {} {{", s.name);
        for m in s.members {
            let _ = writeln!(h, "\t{}\t{};", m.decl, m.name);
        }
        if let Some(t) = s.tail {
            let _ = writeln!(h, "\t{t};");
        }
        let attr = if s.align == 8 { " __attribute__((aligned(8)))" } else { "" };
        let _ = writeln!(h, "}}{attr};");
        let _ = writeln!(
            h,
            "_Static_assert(sizeof(struct {0}) == {1}, \"struct {0} is {1} bytes\");\n",
            s.name, s.size
        );
    }
    for d in ioctls {
        let _ = writeln!(h, "#define {:<28}{}\t/* {:#x} */", d.name, d.c, d.value);
    }
    h.push_str("\n#endif /* PLOOP_MODEL_IF_H */\n");
    h
}

/// Writes the header; true when it changed.
pub fn write() -> anyhow::Result<bool> {
    let path = header_path();
    let text = render();
    if std::fs::read_to_string(&path).is_ok_and(|old| old == text) {
        return Ok(false);
    }
    std::fs::write(&path, text)?;
    Ok(true)
}

#[cfg(test)]
mod tests {
    use std::process::Command;

    use super::*;

    #[test]
    fn ploop_if_h_is_current() {
        let on_disk = std::fs::read_to_string(header_path()).unwrap();
        assert!(
            on_disk == render(),
            "tests/ploop-model/ploop_if.h differs from ploop-common's ABI: run `cargo xtask gen-ploop-if`"
        );
    }

    /// The C compiler's reading of the header is the Rust one: every value, every struct's
    /// size and every member's offset.
    #[test]
    fn c_reads_the_header_as_rust_does() {
        let dir = tempfile_dir();
        let mut c = String::from(
            "#include <stdio.h>\n#include <stddef.h>\n#include \"ploop_if.h\"\nint main(void) {\n",
        );
        let mut want = String::new();
        for d in C_DEFINES {
            let _ = writeln!(c, "printf(\"{} %lld\\n\", (long long)({}));", d.name, d.name);
            let _ = writeln!(want, "{} {}", d.name, d.value);
        }
        for s in C_STRUCTS {
            let _ = writeln!(c, "printf(\"sizeof {0} %zu\\n\", sizeof(struct {0}));", s.name);
            let _ = writeln!(want, "sizeof {} {}", s.name, s.size);
            for m in s.members {
                let field = m.name.split('[').next().unwrap();
                let _ = writeln!(
                    c,
                    "printf(\"offsetof {0}.{1} %zu\\n\", offsetof(struct {0}, {1}));",
                    s.name, field
                );
                let _ = writeln!(want, "offsetof {}.{} {}", s.name, field, m.offset);
            }
        }
        c.push_str("return 0; }\n");
        let src = dir.join("abi.c");
        std::fs::write(&src, c).unwrap();
        let exe = dir.join("abi");
        let st = Command::new("cc")
            .arg("-Wall")
            .arg("-Werror")
            .arg("-I")
            .arg(header_path().parent().unwrap())
            .arg(&src)
            .arg("-o")
            .arg(&exe)
            .status()
            .expect("cc (apt-get install gcc)");
        assert!(st.success(), "the generated header does not compile");
        let out = Command::new(&exe).output().unwrap();
        assert_eq!(String::from_utf8(out.stdout).unwrap(), want);
        let _ = std::fs::remove_dir_all(dir);
    }

    fn tempfile_dir() -> PathBuf {
        let d = std::env::temp_dir().join(format!("ploop-if-{}", std::process::id()));
        std::fs::create_dir_all(&d).unwrap();
        d
    }
}
