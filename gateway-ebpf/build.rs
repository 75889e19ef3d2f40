//! Compiles the C eBPF programs with clang so the daemon can embed the object.
//!
//! Stable Rust only: the kernel side is C (docs/design.md says why).

use std::env;
use std::path::{Path, PathBuf};
use std::process::Command;

const SOURCES: &[&str] = &["redirect", "exec_check"];
const INSTALL_HINT: &str = "install them with: sudo apt-get install -y clang-19 libbpf-dev \
     (or run `cargo xtask run`/`cargo xtask test`, which installs them when run as root)";

fn main() {
    let src = Path::new("src/bpf");
    println!("cargo:rerun-if-changed={}", src.display());
    println!("cargo:rerun-if-env-changed=CLANG");
    let out = PathBuf::from(env::var_os("OUT_DIR").expect("cargo sets OUT_DIR"));

    let clang = find_clang().unwrap_or_else(|| {
        fail(&format!(
            "no clang found (tried $CLANG, clang-19, clang-18, clang-17, clang-16, clang); {INSTALL_HINT}"
        ))
    });
    if !Path::new("/usr/include/bpf/bpf_helpers.h").exists() {
        fail(&format!(
            "libbpf headers missing (/usr/include/bpf/bpf_helpers.h); {INSTALL_HINT}"
        ));
    }
    // <linux/bpf.h> pulls in <asm/types.h>, which Debian keeps under the multiarch triplet.
    let multiarch = Command::new("gcc")
        .arg("-print-multiarch")
        .output()
        .ok()
        .and_then(|o| String::from_utf8(o.stdout).ok())
        .map(|s| s.trim().to_string())
        .filter(|s| !s.is_empty())
        .unwrap_or_else(|| format!("{}-linux-gnu", env::consts::ARCH));

    for name in SOURCES {
        let input = src.join(format!("{name}.bpf.c"));
        let output = out.join(format!("{name}.bpf.o"));
        let status = Command::new(&clang)
            .args(["-O2", "-g", "-Wall", "-Werror", "-target", "bpf"])
            .arg(format!("-I/usr/include/{multiarch}"))
            .arg("-I")
            .arg(src)
            .arg("-c")
            .arg(&input)
            .arg("-o")
            .arg(&output)
            .status()
            .unwrap_or_else(|e| fail(&format!("running {clang}: {e}")));
        if !status.success() {
            fail(&format!("{clang} failed to compile {}", input.display()));
        }
    }
}

fn find_clang() -> Option<String> {
    let mut candidates: Vec<String> = env::var("CLANG").ok().into_iter().collect();
    candidates.extend(
        ["clang-19", "clang-18", "clang-17", "clang-16", "clang"]
            .iter()
            .map(|s| s.to_string()),
    );
    candidates.into_iter().find(|c| {
        Command::new(c)
            .arg("--version")
            .output()
            .map(|o| o.status.success())
            .unwrap_or(false)
    })
}

fn fail(msg: &str) -> ! {
    eprintln!("error: gateway-ebpf: {msg}");
    std::process::exit(1);
}
